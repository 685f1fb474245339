"""What the command shows: results on stdout, what a user can act on on stderr, both with the control
characters that data may hold shown as escapes; and the short table every verb ends with."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with terminal control characters (escape sequences, bells, bidirectional overrides) shown as
    `\\xNN`/`\\uNNNN` escapes: class names, file names and messages come from data, and a terminal would act
    on them."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


class SafeConsole(Console):
    """A rich Console that shows control characters in any text it renders (tables, titles, messages) as
    escapes."""

    def render_str(self, text: str, **kwargs: Any):  # noqa: ANN201 - rich's Text
        return super().render_str(visible(text), **kwargs)


def percent(fraction: float | None) -> str:
    """An accuracy (a fraction in [0, 1]) as every command shows it to a person: a percentage with two decimals
    and a % sign; machine output (JSON, CSV, metrics files) keeps the fraction."""
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"


def _pipe_width() -> int | None:
    """On a pipe (`cnnkit ... | cat`), tables are as wide as their content: one row per line, names whole;
    on a terminal, its width (or COLUMNS)."""
    return None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 100_000


stdout = SafeConsole(markup=False, width=_pipe_width())  # what stdout shows comes from data: never markup
err = SafeConsole(stderr=True)  # cnnkit's own markup ("error:" in red); data in it is escaped


def summary(title: str, rows: dict[str, Any]) -> None:
    """The short table every verb ends with."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in rows.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    stdout.print(t)

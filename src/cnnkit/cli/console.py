"""What the command shows: results on stdout, what a user can act on on stderr, both with the control
characters that data may hold shown as escapes; and the short table every verb ends with.

One convention for every command: on a terminal, a table for a person (accuracies as `percent`, names and
paths folded onto more lines when the terminal is narrow, never cut short); on a pipe, the same table as wide
as its content, one row per line; with --json or --csv (`machine_format`), machine output (`print_rows`): full
names and paths, accuracies as fractions in [0, 1], as the JSON and CSV files cnnkit writes hold them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from cnnkit.errors import ConfigError

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
    return "n/a" if fraction is None or fraction != fraction else f"{100 * fraction:.2f}%"  # NaN: not measured


def _pipe_width() -> int | None:
    """On a pipe (`cnnkit ... | cat`), tables are as wide as their content: one row per line, names whole;
    on a terminal, its width (or COLUMNS)."""
    return None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 100_000


# emoji off: `sample-c:fog:1` is a data set's name, not the fog emoji
stdout = SafeConsole(markup=False, emoji=False, width=_pipe_width())  # what stdout shows comes from data: never markup
err = SafeConsole(stderr=True, emoji=False)  # cnnkit's own markup ("error:" in red); data in it is escaped


def summary(title: str, rows: dict[str, Any]) -> None:
    """The short table every verb ends with."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in rows.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    stdout.print(t)


def machine_format(as_json: bool, as_csv: bool) -> str | None:
    """What --json and --csv ask for: "json", "csv", or None (the table)."""
    if as_json and as_csv:
        raise ConfigError("give --json or --csv, not both")
    return "json" if as_json else "csv" if as_csv else None


def _cell(value: Any) -> Any:
    """A CSV cell: a list or mapping as JSON, None empty, text with its control characters escaped."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return visible(str(value)) if not isinstance(value, (int, float)) else value


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """`rows` as machine output: a JSON list, or CSV with a header of every key in the order first met (lists
    and mappings in a cell as JSON). Values as they are: full paths, fractions, raw numbers."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str) + "\n"  # non-ASCII and control characters escaped
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(r.get(k)) for k in keys} for r in rows)
    return buf.getvalue()


def print_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    """`rows` on stdout as machine output (see `format_rows`), in place of a table."""
    sys.stdout.write(format_rows(rows, fmt))
    sys.stdout.flush()

"""Running `cnnkit` as a user does, in a process of its own, for the tests that chain commands: the output
of one step given to the next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cnnkit(*args: object, cwd: Path | None = None, timeout: float = 300, tty_width: int | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`cnnkit ARGS` in a fresh process, its stdout a pipe (as in `cnnkit ... | cat`); stdout and stderr captured
    as text. `tty_width` sets COLUMNS, as a terminal of that width would."""
    extra = {"COLUMNS": str(tty_width)} if tty_width else {}
    return subprocess.run([sys.executable, "-m", "cnnkit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **extra, **(env or {})})


def ok(result: subprocess.CompletedProcess) -> str:
    """The stdout of a command that must have succeeded (its stderr in the failure message)."""
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout

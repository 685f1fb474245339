"""The command line this process runs: what `--nproc` starts again on each process, and what a stopped
training names to continue it."""

from __future__ import annotations

_ARGV: list[str] = []


def remember(argv: list[str]) -> None:
    """Record the command line `cnnkit.cli.main` runs (its global options included)."""
    _ARGV[:] = argv


def command_line() -> list[str]:
    """The command line `cnnkit.cli.main` runs, as `remember` recorded it."""
    return list(_ARGV)

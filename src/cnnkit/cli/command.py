"""The `cnnkit` command: the app that registers every verb, in the flow's order, and the error contract.

A user's mistake (a CnnkitError, a usage error) prints `error: MESSAGE` on one line of stderr and exits 2; a full
disk says so in one line; a bug prints one line and exits 1; SIGINT or SIGTERM ends the command with 128 + the
signal's number and one line. --debug (or CNNKIT_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
import warnings
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.exceptions import TyperException

from cnnkit.cli import compress, data, demo, deploy, evaluate, explain, models, represent, serve, session, soup, train
from cnnkit.cli.console import err
from cnnkit.errors import CnnkitError

# --help in click's plain layout (rich_markup_mode=None): each option's names on one line, whole, and its text
# wrapped under it at any width; rich's panels cut long option names and texts short ("--train-images-p…") on an
# 80-column terminal
HELP = dict(rich_markup_mode=None, no_args_is_help=True)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, **HELP,
                  help="Train, evaluate and ship convolutional image classifiers.")
data_app = typer.Typer(**HELP, help="Prepare data sets: WebDataset shards for training at scale; the bundled "
                                   "sample as image files.")
models_app = typer.Typer(**HELP, help="List and inspect the registered models.")

# (group, verb, what runs it), in the flow's order: data -> model -> train -> evaluate -> explain -> represent ->
# soup -> compress -> export / bench -> serve / explore; and the demo of it all
VERBS = [
    (data_app, "shard", data.shard), (data_app, "export-sample", data.export_sample),
    (models_app, "list", models.list_), (models_app, "info", models.info),
    (app, "train", train.train), (app, "distill", train.distill), (app, "pretrain", train.pretrain),
    (app, "eval", evaluate.eval_), (app, "predict", evaluate.predict),
    (app, "explain", explain.explain), (app, "visualize", explain.visualize),
    (app, "features", represent.features), (app, "probe", represent.probe),
    (app, "soup", soup.soup),
    (app, "compress", compress.compress),
    (app, "export", deploy.export), (app, "bench", deploy.bench),
    (app, "serve", serve.serve), (app, "explore", serve.explore),
    (app, "demo", demo.demo),
]
for group, name, verb in VERBS:  # the list of commands shows each one's first paragraph whole (wrapped, not cut)
    group.command(name, short_help=" ".join((verb.__doc__ or "").split("\n\n")[0].split()))(verb)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("cnnkit")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from cnnkit import __version__ as number
        sys.stdout.write(f"cnnkit {number}\n")
        raise typer.Exit()


@app.callback()
def global_options(
    debug: Annotated[bool, typer.Option("--debug", help="On an error, show the full traceback instead of one line "
                                                        "(also CNNKIT_DEBUG=1); accepted before or after the "
                                                        "command.")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_show_version,
                                          help="Print cnnkit's version and exit.")] = False,
) -> None:
    """Train, evaluate, explain, compress and ship convolutional image classifiers."""


_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs a verb; user errors print one line and return non-zero (tracebacks with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("CNNKIT_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    # what `--nproc` starts again on each process
    session.remember(args + (["--debug"] if debug else []))
    if not debug:
        warnings.showwarning = _show_warning
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit should fail the write (one line), not kill the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous = _catch_stop_signals()
    try:
        return _run(args)
    except StopSignal as e:
        err.print(_interrupted_line(e.signum), highlight=False, markup=False, soft_wrap=True)
        return 128 + e.signum
    except OSError as e:
        if debug or e.errno not in _DISK_ERRNOS:
            raise
        name = f" {e.filename}" if e.filename else ""
        _print_error(f"cannot write{name}: {os.strerror(e.errno)}; free space or raise the limit, then "
                     f"--resume a training run (its last complete checkpoint is kept)")
        return 2
    except CnnkitError as e:
        if debug:
            raise
        if str(e) and os.environ.get("RANK", "0") == "0":  # under torchrun every rank meets the same
            _print_error(str(e))  # mistake: rank 0 says it
        return e.exit_code
    except typer.Exit as e:  # --help and friends
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err.print(_interrupted_line(signal.SIGINT), highlight=False, markup=False, soft_wrap=True)
        return 130
    except BrokenPipeError:  # the reader went away (`cnnkit models list | head -1`): stop quietly
        _silence_stdout()
        return 0
    except SystemExit as e:  # typer turns a closed pipe into exit status 1 even outside standalone mode
        if isinstance(e.__context__, BrokenPipeError):
            _silence_stdout()
            return 0
        raise
    except TyperException as e:  # a usage error from the argument parser: one line and where to look
        return _usage_error(e)
    except Exception as e:  # anything else is a bug: one line, the traceback only with --debug
        if debug:
            raise
        if _peers_lost(e):
            _print_error(_peers_lost_line(e))
            return 1
        _print_error(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        return 1
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _peers_lost(e: Exception) -> bool:
    """Whether `e` says that a collective timed out or a peer's connection closed: torch.distributed's own
    errors, and the RuntimeError that gloo's transport raises inside DistributedDataParallel's backward pass."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return False
    text = str(e)
    return isinstance(e, getattr(dist, "DistError", ())) or (
        isinstance(e, RuntimeError) and ("/gloo/transport/" in text or "collective operation timeout" in text))


def _peers_lost_line(e: Exception) -> str:
    from cnnkit.train.distributed import TIMEOUT_VARIABLE, collective_timeout

    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    why = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's source location
    return (f"the run's processes lost each other ({why}): one stopped, or waited over "
            f"{collective_timeout().total_seconds():g} s ({TIMEOUT_VARIABLE}) for the others; their output says "
            f"which. --resume the run to continue from its last checkpoint")


def _run(args: list[str]) -> int:
    """Run the command line `args` (global options taken out); its exit status."""
    from cnnkit.runtime import exclusive_threads, reuse_freed_memory

    # one command at a time: cnnkit may tune torch's thread count, and keeps the memory each batch frees for
    # the next batch (a command's process is cnnkit's own)
    with exclusive_threads(), reuse_freed_memory():
        code = app(args=args, prog_name="cnnkit", standalone_mode=False)
    sys.stdout.flush()  # a closed pipe shows here rather than at exit
    # typer turns a KeyboardInterrupt raised outside cnnkit's handler into a returned 130
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _usage_error(e: TyperException) -> int:
    if type(e).__name__ == "NoArgsIsHelpError":  # `cnnkit` or `cnnkit models` alone: the help
        e.show()
        return e.exit_code
    ctx = getattr(e, "ctx", None)
    where = f" (see {ctx.command_path} --help)" if ctx is not None else " (see cnnkit --help)"
    _print_error(e.format_message() + where)
    return 2


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _print_error(message: str) -> None:
    """`error: MESSAGE` on one line of stderr, the message shown literally (no rich markup)."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    err.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


class StopSignal(BaseException):
    """SIGINT or SIGTERM arrived: unwinds the command (a BaseException, so that no `except Exception` on the way
    swallows it, and not KeyboardInterrupt, which typer turns into a return value)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


_COMMAND_PID: int | None = None  # the process `main` runs in (forked workers inherit the handler, not the role)


def _raise_stop(signum: int, _frame: object) -> None:
    if os.getpid() == _COMMAND_PID:
        raise StopSignal(signum)
    # a forked worker (DataLoader's): what it would have done without cnnkit's handler. Its loop ends quietly on
    # KeyboardInterrupt (Ctrl-C reaches the whole process group); SIGTERM ends it as the signal does
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _catch_stop_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM end the command with 128 + the signal's number and one line (the main thread only;
    `cnnkit serve` sets its own handlers while it serves, and stops cleanly)."""
    global _COMMAND_PID
    if threading.current_thread() is not threading.main_thread():
        return {}
    _COMMAND_PID = os.getpid()
    return {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}


def _interrupted_line(signum: int) -> str:
    """The one line a stopped command prints: what stopped it and, for training, how to continue."""
    name = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    argv = session.command_line()
    if argv[:1] not in (["train"], ["distill"], ["pretrain"]):
        return name
    run = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--out", "--resume")), "RUN_DIR")
    return f"{name}; the last completed epoch's checkpoint is kept (continue with: cnnkit {argv[0]} --resume {run})"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush into a closed pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests capture it)
        pass


def entry() -> None:
    """The console script `cnnkit`: `main` on the process's command line, and its exit status."""
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    sys.exit(code)

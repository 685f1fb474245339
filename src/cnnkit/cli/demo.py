"""`cnnkit demo`: the whole flow on the bundled sample, in a minute."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnnkit.cli.console import stdout, summary
from cnnkit.cli.options import Quiet, check_out_folder


def demo(
    out: Annotated[Path, typer.Option(help="Run directory for the demo.")] = Path("runs/demo"),
    budget: Annotated[str, typer.Option(help="Training time, planned for this machine (the whole demo takes about "
                                             "15 s more: start-up, test evaluation and the report).")] = "40s",
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Train this many epochs instead of to "
                                                              "--budget.")] = None,
    quiet: Quiet = False,
) -> None:
    """Train the default model on the bundled Fashion-MNIST sample, evaluate it and write an HTML report."""
    from cnnkit.train.budget import parse_budget

    check_out_folder(out)
    length = {"epochs": epochs} if epochs is not None else {"budget": parse_budget(budget)}
    from cnnkit.evaluate import evaluate
    from cnnkit.report.run_report import write_run_report
    from cnnkit.train import fit

    # on stdout: stderr carries nothing but the one error line should the run fail (an --out cnnkit cannot use)
    how = f"for {epochs} epochs" if epochs is not None else f"for {budget} of training"
    stdout.print(f"cnnkit demo: training the default model on the bundled Fashion-MNIST sample {how}", soft_wrap=True)
    result = fit(data="sample", recipe="fast", out=str(out), overwrite=True, progress=not quiet, **length)
    ev = evaluate(result.best_checkpoint, "sample", "test", out_dir=result.run_dir)
    report = write_run_report(result, ev)
    summary("demo", {"model": result.config.model, "train/val images": f"{result.train_images}/{result.val_images}",
                     "test top-1": ev.metrics["top1"], "seconds": f"{result.seconds:.1f}", "report": report})
    print(report.resolve())

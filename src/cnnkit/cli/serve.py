"""`cnnkit serve` and `cnnkit explore`: models over HTTP, and a CNN Explainer in the browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnnkit.cli.console import err, stdout, summary
from cnnkit.cli.options import AllowOrigin, Amp, Device, Host, NmsIou, Port, ScoreThreshold, TokenFile, check_early
from cnnkit.errors import ConfigError


def _access(host: str, token: str | None, token_file: Path | None, allow_origin: list[str] | None):  # noqa: ANN202
    """The token (from --token, --token-file or $CNNKIT_TOKEN) and the allowed origins; warns on stderr when the
    token came on the command line, or when a non-loopback address has none."""
    from cnnkit.serve import is_loopback, parse_origins, resolve_token

    token, warning = resolve_token(token, token_file)
    origins = parse_origins(allow_origin)
    warnings_ = [warning] if warning else []
    if not is_loopback(host) and not token:
        warnings_.append(f"warning: --host {host} without a token: anyone who can reach it can use it")
    for line in warnings_:
        err.print(line, soft_wrap=True, markup=False, highlight=False)
    return token, origins


def serve(
    artifacts: Annotated[list[str], typer.Argument(help="What to serve: run directories, checkpoints, .onnx or .pt2 "
                                                        "files (int8 included); NAME=PATH names one (default: the folder's "
                                                        "or file's name).")],
    host: Host = "127.0.0.1",
    port: Port = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Most images in one forward pass (1 turns batching "
                                                       "off).")] = 32,
    max_delay_ms: Annotated[float, typer.Option(min=0, help="Longest wait for a batch to fill, in "
                                                            "milliseconds.")] = 5.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Images waiting per model; beyond, 503 with "
                                                       "Retry-After.")] = 256,
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds a client has for each step of a request: to send "
                                                          "its headers (else it is disconnected), its body (408), to "
                                                          "be answered, queueing included (504); and the longest a "
                                                          "shutdown waits for requests in flight.")] = 30.0,
    token: Annotated[Optional[str], typer.Option(help="Require Authorization: Bearer TOKEN. Prefer $CNNKIT_TOKEN or "
                                                      "--token-file: on the command line it shows in ps (a warning "
                                                      "says so).")] = None,
    token_file: TokenFile = None,
    allow_origin: AllowOrigin = None,
    max_connections: Annotated[Optional[int], typer.Option(min=1, help="Most open connections (default 1000, kept "
                                                                       "below ulimit -n); past it the one waiting "
                                                                       "longest for its headers is closed, or the "
                                                                       "new one gets 503.")] = None,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body in MB (413).")] = 16.0,
    max_pixels: Annotated[int, typer.Option(min=1, help="Largest image in pixels, checked before decoding "
                                                        "(413).")] = 40_000_000,
    max_images: Annotated[int, typer.Option(min=1, help="Most images in one request (413).")] = 64,
    device: Device = "auto",
    amp: Amp = "off",
    score_threshold: ScoreThreshold = None,
    nms_iou: NmsIou = None,
) -> None:
    """Serve models over HTTP: predictions and explanations, batched, with health and Prometheus metrics."""
    check_early(device=device, amp=amp)
    from cnnkit.evaluate.boxes import check_postprocess

    check_postprocess(score_threshold, nms_iou)  # one line now, not after the models have loaded
    from cnnkit.serve import ServeOptions, bind, connection_limit, load_models
    from cnnkit.serve import serve as run_service

    max_connections = connection_limit(max_connections)  # resolved once; one line now if it does not fit ulimit -n
    token, origins = _access(host, token, token_file, allow_origin)
    sock = bind(host, port)  # a taken port is one line now, not after the models have loaded
    models = load_models(artifacts, device, amp, score_threshold=score_threshold, nms_iou=nms_iou)
    options = ServeOptions(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue, timeout_s=timeout,
                           max_body_mb=max_body_mb, max_pixels=max_pixels, max_images=max_images, token=token,
                           allow_origins=origins, max_connections=max_connections)

    def ready(url: str) -> None:  # the address, then each model's own URL, whole, one a line
        from urllib.parse import quote

        stdout.print(f"cnnkit serve: {url} (API schema {url}/openapi.json; batches of up to {max_batch} images "
                     f"within {max_delay_ms:g} ms)", soft_wrap=True)
        width = max(map(len, models))
        for name in models:
            stdout.print(f"  {name:<{width}}  {url}/v1/models/{quote(name, safe='')}", soft_wrap=True)

    run_service(models, host, port, options, on_ready=ready, sock=sock)


def explore(
    artifacts: Annotated[list[str], typer.Argument(help="Run directories or checkpoints to explore (NAME=PATH names "
                                                        "one); the page shows the first and lets you switch.")],
    host: Host = "127.0.0.1",
    port: Port = 8000,
    export: Annotated[Optional[Path], typer.Option(help="Write a self-contained static site to this folder instead "
                                                        "of serving (one index.html: opens from file:// too).")] = None,
    images: Annotated[int, typer.Option(min=1, max=64, help="With --export: how many test images it holds.")] = 8,
    token: Annotated[Optional[str], typer.Option(help="Require Authorization: Bearer TOKEN (open the page with "
                                                      "?token=). Prefer $CNNKIT_TOKEN or --token-file: on the "
                                                      "command line it shows in ps (a warning says so).")] = None,
    token_file: TokenFile = None,
    allow_origin: AllowOrigin = None,
    device: Device = "auto",
    score_threshold: ScoreThreshold = None,
    nms_iou: NmsIou = None,
) -> None:
    """A CNN Explainer for your model in the browser: every layer's activations, what each one computes, why
    this class, and a hyperparameter playground."""
    check_early(device=device)
    from cnnkit.evaluate.boxes import check_postprocess

    check_postprocess(score_threshold, nms_iou)
    boxes = {"score_threshold": score_threshold, "nms_iou": nms_iou}  # a detection model's
    from cnnkit.serve import ServeOptions, bind, load_models
    from cnnkit.serve import serve as run_service

    if export is not None:
        from cnnkit.serve.explore import Explorer, export_site

        if len(artifacts) != 1:
            raise ConfigError("--export writes one model's site: give one artifact")
        m = next(iter(load_models(artifacts, device, measure_layout=False, **boxes).values()))
        path = export_site(Explorer(m), export, images=images)
        summary("explore", {"site": path, "images": images, "size": f"{path.stat().st_size / 2**20:.1f} MB",
                            "open": f"{path.resolve().as_uri()} (or any static web server)"})
        return
    token, origins = _access(host, token, token_file, allow_origin)
    sock = bind(host, port)
    # the explorer's answers are one image at a time: no need to time memory layouts for batches first
    models = load_models(artifacts, device, measure_layout=False, **boxes)
    closed = [n for n, m in models.items() if not m.explainable]
    if closed:
        raise ConfigError(f"{closed[0]!r} is an exported artifact; the explorer needs the run directory or "
                          f".safetensors checkpoint (what `cnnkit train` wrote)")

    def ready(url: str) -> None:
        stdout.print(f"cnnkit explore: open {url}/{f'?token={token}' if token else ''} (API schema "
                     f"{url}/openapi.json)", soft_wrap=True)

    run_service(models, host, port, ServeOptions(token=token, allow_origins=origins), on_ready=ready, sock=sock)

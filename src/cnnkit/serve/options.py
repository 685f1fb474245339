"""The service's options (`ServeOptions`), and the access options of `cnnkit serve` read into them: the bearer
token (--token, --token-file or $CNNKIT_TOKEN), the allowed origins, and whether a host is this machine only."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cnnkit.errors import ConfigError


@dataclass
class ServeOptions:
    """The service's limits and access rules (each answer they cause is named beside it)."""

    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256  # images waiting per model; more -> 503 with Retry-After
    timeout_s: float = 30.0  # per request, queueing included -> 504
    max_body_mb: float = 16.0  # -> 413
    max_pixels: int = 40_000_000  # per image, checked from the header before decoding -> 413
    max_images: int = 64  # per request -> 413
    token: str | None = None  # bearer token for /v1 and /metrics -> 401
    # without a token: origins (scheme://host:port) whose pages may call the API, and whose host may be in the
    # Host header, besides the server's own address and localhost's -> 403
    allow_origins: tuple[str, ...] = ()
    max_connections: int | None = None  # open at once (None: connections.connection_limit's default)


def is_loopback(host: str) -> bool:
    """Whether `host` is an address of this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def parse_origins(origins: list[str] | None) -> tuple[str, ...]:
    """--allow-origin values as scheme://host[:port], lower case; ConfigError for anything else."""
    out = []
    for o in origins or []:
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", o.strip().rstrip("/")):
            raise ConfigError(f"--allow-origin must be an origin such as http://myhost:8000 (scheme, host and port, "
                              f"no path), got {o!r}")
        out.append(o.strip().rstrip("/").lower())
    return tuple(out)


def resolve_token(given: str | None, token_file: Path | None) -> tuple[str | None, str | None]:
    """The bearer token from --token (`given`), --token-file (its one line, stripped) or $CNNKIT_TOKEN, in
    that order; and a warning to print when it came from the command line, where `ps` shows it to every user
    of the machine. ConfigError for both options at once, or a file that cannot be read or is empty."""
    if given is not None and token_file is not None:
        raise ConfigError("give --token or --token-file, not both")
    if given is not None:
        if not given.strip():
            raise ConfigError("--token is empty")
        return given.strip(), ("warning: --token shows in `ps` to every user of this machine (and in the shell's "
                               "history); give it in $CNNKIT_TOKEN or --token-file instead")
    if token_file is not None:
        try:
            text = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --token-file {token_file}: {getattr(e, 'strerror', None) or e}") from None
        if not text or "\n" in text:
            raise ConfigError(f"--token-file {token_file} must hold the token on one line")
        return text, None
    return (os.environ.get("CNNKIT_TOKEN") or "").strip() or None, None

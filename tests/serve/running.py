"""A real `cnnkit serve` process for a test: on 127.0.0.1, at a port the OS chooses, terminated afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def running_service(*args: str, ready_s: float = 60) -> Iterator[str]:
    """`cnnkit serve ARGS --port 0` in its own process; yields its base URL (http://127.0.0.1:PORT) once it
    answers /readyz."""
    from cnnkit.serve.client import Client

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnkit", "serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        with Client(m.group(1)) as c:
            c.wait_ready(ready_s)
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(30)

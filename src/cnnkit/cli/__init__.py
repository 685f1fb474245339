"""The `cnnkit` command: a thin layer over the Python API.

One app registers the verbs and holds the error contract (`command`); the options several verbs share are
declared once (`options`), and `cnnkit train`'s from TrainConfig's field metadata (`train`); one module per group
of verbs, in the flow's order: data, models, train, evaluate, explain, represent, soup, compress, deploy, serve,
demo. Errors print one line; --debug shows tracebacks.
"""

import os

# torch's C++ notices (e.g. that quantized tensor functions are deprecated, printed when an int8 model
# runs) bypass Python's warnings and would land on stderr; the command keeps stderr for what a user can
# act on. Read by torch when it is first imported, which happens after this line; a user's setting wins.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from cnnkit.cli.command import app, entry, main  # noqa: E402
from cnnkit.cli.console import stdout  # noqa: E402
from cnnkit.cli.options import parse_img_size  # noqa: E402

__all__ = ["app", "main", "entry", "stdout", "parse_img_size"]

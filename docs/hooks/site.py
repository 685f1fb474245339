"""MkDocs hooks of this site. Both read local files only.

- The figures the benchmark scripts write under benchmarks/results/ join the site at that same path, so a page
  shows `benchmarks/results/explore/overview.png` from where the script left it, without a copy in docs/ that
  could drift from it.
- In a table row, `\\|` inside a code span is how GitHub writes a pipe there; Python-Markdown already keeps
  pipes inside code spans out of the cell split and would show the backslash, so the pages keep GitHub's
  spelling and the site gets the plain pipe.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "benchmarks" / "results"
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def on_files(files: Files, config) -> Files:  # noqa: ANN001
    """Add every PNG under benchmarks/results/ as a static file of the site."""
    for path in sorted(FIGURES.rglob("*.png")):
        files.append(File(path.relative_to(ROOT).as_posix(), src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, **kwargs) -> str:  # noqa: ANN003
    """`\\|` inside the code spans of table rows, outside fenced code, becomes `|`."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("|"):
            line = CODE_SPAN.sub(lambda m: m.group(0).replace("\\|", "|"), line)
        out.append(line)
    return "\n".join(out)

"""The documentation site builds, offline and without a warning, and has the shape its readers need: a short
README, one page per step, an API reference of the public packages, one page per benchmark study.

Also here: the summary `make test` ends with (tests/conftest.py's pytest_terminal_summary), which names what
was skipped and why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PUBLIC_PACKAGES = ["data", "models", "tasks", "train", "evaluate", "explain", "compress", "deploy", "serve",
                   "represent", "merge", "artifacts"]
# the flow's steps, in its order: each page holds the commands of its step
FLOW = ["data.md", "models.md", "train.md", "evaluate.md", "predict.md", "explain.md", "compress.md", "export.md",
        "bench.md", "serve.md", "explore.md"]


def config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def nav_pages(nav: list) -> list[str]:
    """The pages of a MkDocs nav, in its order."""
    out = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_docs_build_strictly_offline(tmp_path):
    """`mkdocs build --strict` (a warning fails it) into a temporary folder, with every proxy pointing at a
    closed port so that anything trying the network fails."""
    site_in_repo = (ROOT / "site").exists()
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1", "HTTP_PROXY": closed,
           "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed, "NO_PROXY": "", "no_proxy": ""}
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert not [line for line in out.splitlines() if "WARNING" in line], out[-4000:]
    assert (ROOT / "site").exists() == site_in_repo, "the build wrote into the repository"
    for package in PUBLIC_PACKAGES:  # each reference page lists the package's names, from its docstrings
        html = (site / "api" / package / "index.html").read_text(encoding="utf-8")
        assert f'id="cnnkit.{package}.' in html, f"the API reference of cnnkit.{package} lists nothing"
    assert (site / "benchmarks" / "results" / "explore" / "overview.png").is_file()  # figures join the site


def test_docs_config_downloads_nothing():
    cfg = config()
    plugins = {next(iter(p)) if isinstance(p, dict) else p for p in cfg.get("plugins", [])}
    assert plugins <= {"search", "mkdocstrings"}, f"a plugin that may download or need more: {plugins}"
    assert cfg["theme"]["name"] == "material" and cfg["theme"].get("font") is False, "web fonts must stay off"


def test_every_page_is_in_the_nav_and_the_flow_in_order():
    pages = nav_pages(config()["nav"])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk
    steps = [p for p in pages if p in FLOW]
    assert steps == FLOW, "the steps' pages follow the flow"
    assert "tasks/classify.md" in pages


def test_api_reference_covers_the_public_packages():
    reference = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.md"))
    missing = [p for p in PUBLIC_PACKAGES if not re.search(rf"^::: cnnkit\.{p}$", reference, re.M)]
    assert not missing, f"docs/api/ has no reference for: {missing}"


def test_benchmark_index_lists_every_study():
    index = (DOCS / "benchmarks" / "index.md").read_text(encoding="utf-8")
    studies = sorted(p.name for p in (DOCS / "benchmarks").glob("*.md") if p.name != "index.md")
    assert len(studies) >= 19
    unlisted = [s for s in studies if f"]({s})" not in index]
    assert not unlisted, f"docs/benchmarks/index.md does not list: {unlisted}"
    assert "How each figure was measured" in index


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert any(link.startswith("docs/") for link in links)
    broken = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


# -- the summary of what was skipped ----------------------------------------------------------------------

def test_the_run_ends_by_naming_what_it_skipped_and_why():
    from tests.conftest import pytest_terminal_summary

    def skipped(reason: str, when: str = "call") -> SimpleNamespace:
        return SimpleNamespace(longrepr=("tests/x.py", 3, f"Skipped: {reason}"), when=when)

    lines: list[str] = []
    reporter = SimpleNamespace(stats={"skipped": [skipped("no chromium"), skipped("glibc only"),
                                                  skipped("no chromium", "setup"), skipped("no chromium", "collect")],
                                      "passed": [object()]},
                               write_sep=lambda sep, title: lines.append(f"-- {title}"),
                               write_line=lines.append)
    pytest_terminal_summary(reporter, 0, None)
    assert lines == ["-- skipped, and why", "2 tests and 1 test file skipped: no chromium",
                     "1 test skipped: glibc only"]
    quiet: list[str] = []
    pytest_terminal_summary(SimpleNamespace(stats={}, write_sep=quiet.append, write_line=quiet.append), 0, None)
    assert quiet == []


def test_make_docs_serves_the_site_locally():
    """`make docs` is how a reader gets the site: the Makefile has the target, bound to loopback, and the
    README says so."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^docs:", makefile, re.M) and "mkdocs serve" in makefile and "127.0.0.1" in makefile
    assert "make docs" in README.read_text(encoding="utf-8")

"""The README, the docs and the tool agree.

The pages read here are README.md and every Markdown page under docs/ (the MkDocs site).

1. Every option of every command (walked from the real CLI) is documented in that command's section: the
   section whose heading names the command in backticks (`cnnkit train`, `cnnkit models info`, and `cnnkit`
   itself for the global options), in whichever page holds it, up to the next heading of the same or a higher
   level, leaving out sub-sections that name another command. Exactly one heading across all the pages names
   each command. An option counts as documented when it starts a code span there (`--epochs N`); for a
   `--x/--no-x` flag either form will do. Conversely, the option tables of a section name only options the
   command has.
2. Every `cnnkit ...` line of the pages' ```bash blocks runs and exits 0, in-process through
   `cnnkit.cli.main`, in a fresh folder, shortened to seconds by the rules in SHORTEN below, with the
   paths it reads (runs/fmnist, photos, fmnist.onnx, ...) made once per module (PLACEHOLDERS): by the README's
   own line that writes them, shortened, where the README writes them (a newcomer has nothing else). A line
   that, shortened, repeats another (in the same page or another one) runs once.
   A line whose comment says "(needs a network)" or "(needs a GPU)" is skipped where that is missing.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest
import typer

import cnnkit.cli
from cnnkit.cli import main
from tests.conftest import stub_peak_memory

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def read_pages() -> dict[str, str]:
    """README.md and every page of docs/, by their path from the repository's root."""
    paths = [README, *sorted(DOCS.rglob("*.md"))]
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in paths}


PAGES = read_pages()


# -- the pages, read as sections and command lines --------------------------------------------------------

def headings(text: str) -> list[tuple[int, int, str]]:
    """(line index, level, title) of every Markdown heading outside fenced code blocks."""
    out, fenced = [], False
    for i, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) (.*)", line)):
            out.append((i, len(m.group(1)), m.group(2).strip()))
    return out


def names_command(title: str, path: tuple[str, ...]) -> bool:
    return f"`{' '.join(('cnnkit', *path))}`" in title


def sections_naming(path: tuple[str, ...], text: str) -> list[str]:
    """The body of each section of `text` whose heading names `cnnkit PATH`, without the sub-sections that
    name another command."""
    lines, hs = text.splitlines(), headings(text)
    out = []
    for k in [k for k, (_, _, title) in enumerate(hs) if names_command(title, path)]:
        start, level = hs[k][0], hs[k][1]
        end = next((i for i, lvl, _ in hs[k + 1:] if lvl <= level), len(lines))
        keep, skipping_below = [], None
        for i in range(start + 1, end):
            h = next(((lvl, title) for j, lvl, title in hs if j == i), None)
            if h is not None:
                if skipping_below is not None and h[0] <= skipping_below:
                    skipping_below = None
                if skipping_below is None and "`cnnkit" in h[1]:  # another command's sub-section
                    skipping_below = h[0]
            if skipping_below is None:
                keep.append(lines[i])
        out.append("\n".join(keep))
    return out


def command_section(path: tuple[str, ...], pages: dict[str, str] | None = None) -> str | None:
    """The section of `cnnkit PATH` across the pages; None if no heading names it, or more than one does."""
    found = [s for text in (PAGES if pages is None else pages).values() for s in sections_naming(path, text)]
    return found[0] if len(found) == 1 else None


def pages_naming(path: tuple[str, ...], pages: dict[str, str] | None = None) -> list[str]:
    """The pages with a heading that names `cnnkit PATH`, once per such heading (for the failure message)."""
    return [name for name, text in (PAGES if pages is None else pages).items()
            for _ in sections_naming(path, text)]


def documented(option: str, section: str) -> bool:
    return re.search("`" + re.escape(option) + r"(?![\w-])", section) is not None


def table_cells(row: str) -> list[str]:
    """The cells of a Markdown table row; a pipe inside a code span, or escaped (`\\|`), splits nothing."""
    cells, cell, i = [], "", 0
    while i < len(row):
        if row.startswith("\\|", i):
            cell, i = cell + "\\|", i + 2
        elif row[i] == "`":
            ticks = re.match(r"`+", row[i:]).group(0)
            close = re.compile(rf"(?<!`){ticks}(?!`)").search(row, i + len(ticks))
            stop = close.end() if close else i + len(ticks)  # an unclosed run of backticks is text
            cell, i = cell + row[i:stop], stop
        elif row[i] == "|":
            cells.append(cell)
            cell, i = "", i + 1
        else:
            cell, i = cell + row[i], i + 1
    return [*cells, cell]


def table_options(section: str) -> set[str]:
    """The options named in the first column of the section's `| option | what |` tables."""
    found, in_table = set(), False
    for line in section.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        first = table_cells(line)[1].strip()
        if first == "option":
            in_table = True
        elif in_table:
            found |= set(re.findall(r"`(--[a-z][\w-]*)", first))
    return found


def bash_command_lines(text: str) -> list[str]:
    """Every `cnnkit ...` line of the ```bash blocks, with backslash continuations joined."""
    out, block, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            block, pending = line.strip() == "```bash", ""
            continue
        if not block:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        line, pending = (pending + line.strip()).strip(), ""
        if line.startswith("cnnkit "):  # not comments, `make ...` or `python -m benchmarks...`
            out.append(line)
    return out


def command_lines(pages: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(page, line) of every `cnnkit ...` line of every page, README first."""
    return [(name, line) for name, text in (PAGES if pages is None else pages).items()
            for line in bash_command_lines(text)]


# -- the CLI ----------------------------------------------------------------------------------------------

def cli_commands() -> list[tuple[tuple[str, ...], object]]:
    """(path, click command) of the root, every group and every command, depth first."""
    out = []

    def walk(cmd: object, path: tuple[str, ...]) -> None:
        out.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(cnnkit.cli.app), ())
    return out


COMMANDS = cli_commands()


def option_names(cmd: object) -> list[tuple[str, list[str]]]:
    """Per long option name of the command's (visible) options: the names documenting it, the option's own
    and, for a `--x/--no-x` flag, its other form."""
    out = []
    for p in cmd.params:  # type: ignore[attr-defined]
        if getattr(p, "param_type_name", "") != "option" or getattr(p, "hidden", False):
            continue
        secondary = [o for o in p.secondary_opts if o.startswith("--")]
        for o in p.opts:
            if o.startswith("--"):
                out.append((o, [o, *secondary]))
    return out


def ids(path: tuple[str, ...]) -> str:
    return " ".join(("cnnkit", *path))


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[ids(p) for p, _ in COMMANDS])
def test_every_option_is_documented_in_its_commands_section(path, cmd):
    section = command_section(path)
    assert section is not None, (f"README.md and docs/ need exactly one heading naming `{ids(path)}`; "
                                 f"found in: {pages_naming(path) or 'none'}")
    missing = [o for o, forms in option_names(cmd) if not any(documented(f, section) for f in forms)]
    assert not missing, f"the section of `{ids(path)}` ({pages_naming(path)[0]}) does not document: {', '.join(missing)}"


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[ids(p) for p, _ in COMMANDS])
def test_option_tables_name_only_real_options(path, cmd):
    section = command_section(path) or ""
    real = {"--help"} | {f for _, forms in option_names(cmd) for f in forms}
    stale = sorted(table_options(section) - real)
    assert not stale, f"the option table of `{ids(path)}` names options it does not have: {stale}"


def test_debug_switch_is_documented_with_its_environment_variable():
    section = command_section(()) or ""
    assert documented("--debug", section) and "CNNKIT_DEBUG=1" in section


def test_section_rules_on_small_pages():
    text = ("## Train: `cnnkit train`\n`--epochs N`\n### Notes\n`--seed`\n### `cnnkit train-more`\n`--lr`\n"
            "#### deeper\n`--amp`\n### Back\n`--tta` / `--no-tta`\n```bash\n# not a heading\n```\n"
            "| option | what |\n| --- | --- |\n| `--x` or `--y N` | z |\n| `--m a\\|b`, `--k` | w |\n"
            "| `--p a|b`, `--q` | v |\n## Next\n`--out`\n")
    section = command_section(("train",), {"a.md": text})
    assert all(documented(o, section) for o in ("--epochs", "--seed", "--tta", "--no-tta", "--x"))
    assert not any(documented(o, section) for o in ("--lr", "--amp", "--out", "--epoch"))
    assert table_options(section) == {"--x", "--y", "--m", "--k", "--p", "--q"}
    assert command_section(("eval",), {"a.md": text}) is None
    # a command's section may be in any page, but in one only
    other = "# Evaluate: `cnnkit eval`\n`--tta`\n"
    assert command_section(("eval",), {"a.md": text, "docs/evaluate.md": other}) == "`--tta`"
    assert command_section(("train",), {"a.md": text, "b.md": text}) is None
    assert pages_naming(("train",), {"a.md": text, "b.md": text}) == ["a.md", "b.md"]


def test_table_cells_keep_pipes_of_code_spans():
    assert table_cells("| `a|b` | c\\|d | ``x|`y`` |") == ["", " `a|b` ", " c\\|d ", " ``x|`y`` ", ""]
    assert table_cells("| `open | b |") == ["", " `open ", " b ", ""]


def test_parser_finds_the_commands():
    verbs = {shlex.split(line, comments=True)[1] for _, line in command_lines()}
    assert {"train", "eval", "predict", "explain", "visualize", "export", "bench", "compress", "demo",
            "models", "serve", "explore", "distill", "pretrain", "features", "probe", "soup", "data"} <= verbs
    readme = {shlex.split(line, comments=True)[1] for line in bash_command_lines(PAGES["README.md"])}
    assert {"train", "eval", "predict", "explain", "compress", "export", "serve"} <= readme, "the README's flow"
    assert bash_command_lines("```bash\ncnnkit train \\\n    --epochs 2   # c\n# cnnkit x\nmake demo\n```\n"
                              "cnnkit outside\n") == ["cnnkit train --epochs 2   # c"]
    assert any(name.startswith("docs/") for name, _ in command_lines()), "the docs' pages were read"


# -- running the pages' commands ------------------------------------------------------------------------

# How each command line of the pages is shortened. The datasets below are replaced by the bundled ones (and
# their --data-dir dropped); then, per command, each option is set to the value shown, replacing the page's
# value or added when absent (None: a flag added).
HEAVY_DATA = {"fashion-mnist": "sample", "mnist": "sample", "cifar10": "sample",
              "cluttered-fashion-mnist": "cluttered-sample"}
# Corruption benchmarks: the sample's, one cell unless the line names its own, 100 images per cell.
CORRUPTED = {"fashion-mnist-c": "sample-c", "mnist-c": "sample-c"}
SHORTEN: dict[str, list[tuple[str, str | None]]] = {
    "train": [("--epochs", "1"), ("--train-images", "300"), ("--quiet", None)],
    "train --resume": [("--epochs", "1"), ("--quiet", None)],  # the resumed run's own settings stand
    "train --budget": [("--budget", "10s"), ("--train-images", "300"), ("--quiet", None)],
    "train --lr-find": [("--train-images", "300"), ("--quiet", None)],
    # several processes: the whole path (launcher, streaming workers, sync-BN, mid-epoch saves), a small net
    "train --nproc": [("--epochs", "1"), ("--train-images", "300"), ("--img-size", "32"), ("--model", "resnet20"),
                      ("--checkpoint-every", "3"), ("--batch-size", "16"), ("--quiet", None)],
    "demo": [("--epochs", "1"), ("--quiet", None)],
    "explain --benchmark": [("--limit", "10"), ("--method", "gradcam,eigencam")],  # all methods: minutes
    "visualize": [("--steps", "5")],
    # --no-onnx: the ONNX and ONNX Runtime int8 files of every variant are covered by tests/test_compress.py
    "compress": [("--finetune-epochs", "0.05"), ("--train-images", "300"), ("--calibration", "64"),
                 ("--repeats", "3"), ("--no-onnx", None)],
    # a segmentation run's only int8 is ONNX Runtime's: no --no-onnx
    "compress segment": [("--train-images", "300"), ("--calibration", "64"), ("--repeats", "3"),
                         ("--test-images", "200")],
    "bench": [("--repeats", "3"), ("--batch", "8")],
    "eval segment": [("--images", "200")],  # a segmentation run's 1,000 test scenes: native scoring, overlays
    "models info": [("--no-timing", None)],
    "explore": [("--images", "1")],
    "pretrain": [("--epochs", "1"), ("--train-images", "300"), ("--quiet", None)],
    "distill": [("--epochs", "1"), ("--train-images", "300"), ("--model", "resnet9"), ("--model-kw", "width=4"),
                ("--quiet", None)],  # the Distill page's ResNet-20 student: seconds more per line
    "features": [("--limit", "50")],
    "probe": [("--train-images", "200"), ("--test-images", "100"), ("--epochs", "2"), ("--quiet", None)],  # the static export: 1 image, not 8 (six explanations of two classes each)
    "soup": [("--bn-images", "200"), ("--quiet", None)],
    # 400 train images (the train lines above take 300 of them, less the validation share) and 40 test per class
    "data export-sample": [("--limit", "40")],
}
# Also: `bench` and `compress` measure each model's peak memory in a fresh Python process (seconds each);
# here that measurement is stubbed (tests/test_deploy.py covers it).

NEEDS = {"(needs a network)": "no network in the tests", "(needs a GPU)": "no CUDA device here",
         # tests/serve/test_serve.py runs these against a real `cnnkit serve` process on loopback
         "(runs until stopped)": "a service that runs until stopped (tests/serve covers it)",
         "(while cnnkit serve runs)": "needing the service above (tests/serve covers it)"}


def command_key(argv: list[str]) -> str:
    """The SHORTEN key of a command line: its command path, plus the option that changes what it does."""
    words = [a for a in argv if a != "--debug"]
    key = words[0] + (f" {words[1]}" if words[0] in ("models", "data") and len(words) > 1 else "")
    for mode in ("--resume", "--benchmark", "--budget", "--lr-find", "--nproc"):
        if mode in words:
            key += f" {mode}"
    if key in ("compress", "eval") and any(w in ("runs/scenes", "scenes.onnx", "scenes.pt2") for w in words):
        key += " segment"
    return key


def set_option(argv: list[str], option: str, value: str | None) -> list[str]:
    if option in argv:
        i = argv.index(option)
        if value is not None:
            argv[i + 1] = value
        return argv
    return argv + [option] + ([] if value is None else [value])


def shorten(argv: list[str]) -> list[str]:
    """The command `argv` of a page (after `cnnkit`), rewritten to run in seconds (HEAVY_DATA, SHORTEN)."""
    argv = list(argv)
    if "--data" in argv and argv[argv.index("--data") + 1] in HEAVY_DATA:
        i = argv.index("--data")
        argv[i + 1] = HEAVY_DATA[argv[i + 1]]
        if "--data-dir" in argv:
            j = argv.index("--data-dir")
            del argv[j:j + 2]
    if "--data" in argv and argv[argv.index("--data") + 1].split(":")[0] in CORRUPTED:
        i = argv.index("--data")
        base, *cells = argv[i + 1].split(":")
        argv[i + 1] = ":".join([CORRUPTED[base], *(cells or ["contrast", "5"])])
        if "--data-dir" in argv:
            j = argv.index("--data-dir")
            del argv[j:j + 2]
        argv = set_option(argv, "--images-per-cell", "100")
    for option, value in SHORTEN.get(command_key(argv), []):
        argv = set_option(argv, option, value)
    return argv


def test_shorten_rules():
    assert shorten(["train", "--data", "fashion-mnist", "--data-dir", "x", "--epochs", "30", "--out", "r"]) == [
        "train", "--data", "sample", "--epochs", "1", "--out", "r", "--train-images", "300", "--quiet"]
    assert shorten(["train", "--resume", "r"]) == ["train", "--resume", "r", "--epochs", "1", "--quiet"]
    assert shorten(["--debug", "models", "info", "x"]) == ["--debug", "models", "info", "x", "--no-timing"]
    assert shorten(["explain", "--benchmark", "--data", "cluttered-fashion-mnist"])[:4] == [
        "explain", "--benchmark", "--data", "cluttered-sample"]
    assert shorten(["data", "export-sample", "photos"]) == ["data", "export-sample", "photos", "--limit", "40"]


# Paths the pages' commands read, made once per module in a folder of their own and copied into each
# command's working folder when the command names them (as a path, or as `imagefolder:<path>`). Those the
# README's flow writes are made by its own line (README_MADE), shortened as SHORTEN says.
PLACEHOLDERS: dict[str, str] = {
    "runs/fmnist": "the README's cnnkit train line, shortened, at width 8 and with --keep-epoch 1 (the rewind of "
                   "docs/compress.md)",
    "photos": "the README's cnnkit data export-sample line, shortened: 40 images per class and split",
    "fmnist.onnx": "the README's cnnkit export line (with its sidecar)",
    "compressed": "the README's cnnkit compress line, shortened",
    "runs/cluttered": "cnnkit train: resnet9 width 8, 1 epoch on 300 cluttered-sample images",
    "fmnist.pt2": "cnnkit export --format torch-export of runs/fmnist, with its sidecar",
    "shirt.png": "a sample test image of a shirt (docs/export.md)",
    "resnet18-f37072fd.pth": "torchvision's resnet18 state dict, randomly initialized (nothing downloaded)",
    "runs/rotnet": "cnnkit pretrain: nin4 width 0.25, 1 epoch on 300 sample images",
    **{f"runs/ing-{s}": f"cnnkit train --init-from runs/fmnist --split-seed 0 --seed {s}: 1 epoch on 200 sample images"
       for s in (1, 2, 3)},  # model-soup ingredients
    "runs/scenes": "cnnkit train --data fashion-scenes: unet_small width 8 depth 2, 1 epoch on 300 scenes",
    "scenes.onnx": "cnnkit export of runs/scenes (with its sidecar)",
    "scenes.pt2": "cnnkit export --format torch-export of runs/scenes, with its sidecar",
    "scene.png": "a fashion-scenes test scene (96×96)",
    "big_scan.png": "a 300×220 grey image made of fashion-scenes test scenes",
    "runs/boxes": "cnnkit train --data fashion-scenes --model retinanet_small: width 8, 1 epoch on 300 scenes",
    "runs/sr3": "cnnkit train --data photographs --model espcn: scale 3, 8 and 8 filters, 1 epoch on 300 patches",
}
OUTPUT_OPTIONS = {"--out", "--json"}  # their values are written, never read
# the options each README-made placeholder adds to the README's line that writes it
README_MADE = {"runs/fmnist": [("--model-kw", "width=8"), ("--keep-epoch", "1")], "photos": [],
               "fmnist.onnx": [], "compressed": []}


def written_by(argv: list[str]) -> str | None:
    """The path a command line writes: its --out, or the folder of `data export-sample DIR`."""
    if argv[:2] == ["data", "export-sample"] and len(argv) > 2:
        return argv[2]
    return argv[argv.index("--out") + 1] if "--out" in argv[:-1] else None


def readme_line_writing(name: str) -> list[str]:
    """The argv (after `cnnkit`) of the one README line that writes `name`, shortened."""
    found = [argv for argv in (shlex.split(line, comments=True)[1:] for line in bash_command_lines(PAGES["README.md"]))
             if written_by(argv) == name]
    assert len(found) == 1, f"README.md has {len(found)} lines writing {name}; the placeholder is made by one"
    return shorten(found[0])


def test_the_readme_writes_what_its_flow_reads():
    """A newcomer has only the README: the run, the image files and the artifacts its lines read are written by
    its own earlier lines (and so the placeholders are made by those lines)."""
    assert readme_line_writing("photos")[:2] == ["data", "export-sample"]
    assert readme_line_writing("runs/fmnist")[0] == "train"
    assert {readme_line_writing(n)[0] for n in ("fmnist.onnx", "compressed")} == {"export", "compress"}
    readme = [shlex.split(line, comments=True)[1:] for line in bash_command_lines(PAGES["README.md"])]
    for i, argv in enumerate(readme):
        reads = {n for n in Placeholders.needed(argv) if n not in README_MADE or written_by(argv) != n}
        earlier = {written_by(a) for a in readme[:i]}
        assert reads <= earlier, f"README line `cnnkit {shlex.join(argv)}` reads {reads - earlier}, not written before it"


def run_cli(*argv: str) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, f"cnnkit {' '.join(map(str, argv))} exited {code}"


class Placeholders:
    """Makes each placeholder on first use under `root/<name>/`, then copies it into a working folder."""

    def __init__(self, root: Path, sample_train) -> None:  # noqa: ANN001
        self.root, self.sample = root, sample_train
        self.makers: dict[str, Callable[[Path], None]] = {
            **{name: lambda at, name=name: self._readme(name) for name in README_MADE},
            "runs/cluttered": self._cluttered, "fmnist.pt2": self._pt2, "shirt.png": self._shirt_png,
            "resnet18-f37072fd.pth": self._resnet18, "runs/rotnet": self._rotnet,
            **{f"runs/ing-{s}": lambda at, s=s: self._ingredient(at, s) for s in (1, 2, 3)},
            "runs/scenes": self._scenes, "scenes.onnx": lambda at: self._scenes_export(at, "onnx"),
            "scenes.pt2": lambda at: self._scenes_export(at, "torch-export"), "scene.png": self._scene_png,
            "big_scan.png": self._big_scan, "runs/boxes": self._boxes, "runs/sr3": self._sr3,
        }
        assert self.makers.keys() == PLACEHOLDERS.keys()

    def path(self, name: str) -> Path:
        """The made placeholder `name` (made now if it is not yet)."""
        home = self.root / name.replace("/", "_")
        if not home.exists():
            home.mkdir(parents=True)
            with pytest.MonkeyPatch.context() as mp:
                stub_peak_memory(mp)
                mp.chdir(home)  # where a README line writes its relative paths
                self.makers[name](home / name)
        return home / name

    def copy_into(self, name: str, cwd: Path) -> None:
        """Copy placeholder `name` (with its sidecar) into `cwd`, not the manifest of the folder it was made in."""
        home = self.path(name).parents[len(Path(name).parts) - 1]
        for src in home.iterdir():
            if src.is_dir():
                shutil.copytree(src, cwd / src.name, dirs_exist_ok=True)
            elif not src.name.startswith(".cnnkit"):
                shutil.copy2(src, cwd / src.name)

    @staticmethod
    def needed(argv: list[str]) -> Iterator[str]:
        """The placeholders `argv` reads (not those it writes)."""
        for i, token in enumerate(argv):
            if (i and argv[i - 1] in OUTPUT_OPTIONS) or (i == 2 and argv[:2] == ["data", "export-sample"]):
                continue
            token = token.removeprefix("imagefolder:").rstrip("/")
            yield from (n for n in PLACEHOLDERS if token == n or token.startswith(n + "/"))

    # -- makers
    def _readme(self, name: str) -> None:
        """Run the README's line that writes `name`, shortened (README_MADE's options added), in the current
        folder, the placeholders it reads given by their made paths."""
        argv = readme_line_writing(name)
        for option, value in README_MADE[name]:
            argv = set_option(argv, option, value)
        reads = set(self.needed(argv))
        run_cli(*(str(self.path(a)) if a in reads else a for a in argv))

    def _rotnet(self, at: Path) -> None:
        run_cli("pretrain", "--model", "nin4", "--model-kw", "width=0.25", "--data", "sample", "--epochs", "1",
                "--train-images", "300", "--out", at, "--quiet")

    def _ingredient(self, at: Path, seed: int) -> None:
        run_cli("train", "--model", "resnet9", "--model-kw", "width=8", "--data", "sample", "--init-from",
                self.path("runs/fmnist") / "best.safetensors", "--split-seed", "0", "--seed", seed, "--epochs", "1",
                "--train-images", "200", "--out", at, "--quiet")

    def _cluttered(self, at: Path) -> None:
        run_cli("train", "--model", "resnet9", "--model-kw", "width=8", "--data", "cluttered-sample", "--epochs",
                "1", "--train-images", "300", "--out", at, "--quiet")

    def _scenes(self, at: Path) -> None:
        run_cli("train", "--data", "fashion-scenes", "--model-kw", "width=8", "--model-kw", "depth=2", "--epochs", "1",
                "--train-images", "300", "--val-fraction", "0.04", "--out", at, "--quiet")

    def _boxes(self, at: Path) -> None:
        run_cli("train", "--data", "fashion-scenes", "--model", "retinanet_small", "--model-kw", "width=8", "--epochs",
                "1", "--train-images", "300", "--val-fraction", "0.04", "--out", at, "--quiet")

    def _sr3(self, at: Path) -> None:
        run_cli("train", "--data", "photographs", "--model", "espcn", "--model-kw", "scale=3", "--model-kw", "n1=8",
                "--model-kw", "n2=8", "--epochs", "1", "--train-images", "300", "--out", at, "--quiet")

    def _scenes_export(self, at: Path, fmt: str) -> None:
        run_cli("export", "--checkpoint", self.path("runs/scenes"), "--format", fmt, "--out", at)

    def _scene_png(self, at: Path) -> None:
        from PIL import Image

        from cnnkit.data import load_dataset

        Image.fromarray(load_dataset("fashion-scenes", "test").images[0, 0].numpy(), "L").save(at)

    def _big_scan(self, at: Path) -> None:
        import numpy as np
        from PIL import Image

        from cnnkit.data import load_dataset

        scenes = load_dataset("fashion-scenes", "test").images[:12, 0].numpy()
        grid = np.concatenate([np.concatenate(list(scenes[r * 4:(r + 1) * 4]), 1) for r in range(3)], 0)
        Image.fromarray(grid[:220, :300], "L").save(at)

    def _pt2(self, at: Path) -> None:
        run_cli("export", "--checkpoint", self.path("runs/fmnist"), "--format", "torch-export", "--out", at)

    def _shirt_png(self, at: Path) -> None:
        from PIL import Image

        idx = (self.sample.labels == 6).nonzero().flatten()[0]
        Image.fromarray(self.sample.images[idx, 0].numpy(), "L").save(at)

    def _resnet18(self, at: Path) -> None:
        import torch
        import torchvision

        at.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.resnet18().state_dict(), at)


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory: pytest.TempPathFactory, sample_train) -> Placeholders:  # noqa: ANN001
    return Placeholders(tmp_path_factory.mktemp("readme-placeholders"), sample_train)


def readme_cases() -> list:
    """One pytest case per distinct shortened command line of the pages (a line that only repeats another,
    in its page or another, runs once)."""
    import torch

    cases, seen = [], set()
    for page, line in command_lines():
        argv = shorten(shlex.split(line, comments=True)[1:])
        if tuple(argv) in seen:
            continue
        seen.add(tuple(argv))
        comment = line.partition(" #")[2]
        need = next((why for mark, why in NEEDS.items() if mark in comment), None)
        if need == NEEDS["(needs a GPU)"] and torch.cuda.is_available():
            need = None
        marks = [pytest.mark.skip(reason=f"README or docs command line: {need}")] if need else []
        cases.append(pytest.param(page, line, argv, marks=marks, id=" ".join(argv)[:80]))
    return cases


@pytest.mark.parametrize("page,line,argv", readme_cases())
def test_command_line_runs(page, line, argv, placeholders, tmp_path, monkeypatch, isolated_cache, capsys):
    """A command line of the pages, shortened (SHORTEN), exits 0 in a fresh folder holding the placeholders it
    reads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNKIT_CACHE", str(isolated_cache))  # a tmp folder (conftest), shared to reuse extractions
    monkeypatch.delenv("CNNKIT_DATA", raising=False)
    for name in set(placeholders.needed(argv)):
        placeholders.copy_into(name, tmp_path)
    stub_peak_memory(monkeypatch)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, (f"{page} line\n    {line}\nran as\n    cnnkit {shlex.join(argv)}\n"
                       f"and exited {code}:\n{err[-2000:]}")


def test_readme_flow_in_one_folder(placeholders, tmp_path, monkeypatch, isolated_cache, capsys):
    """Following the pages in one folder: export next to the run, then resume the run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNKIT_CACHE", str(isolated_cache))
    placeholders.copy_into("runs/fmnist", tmp_path)
    assert main(["export", "--checkpoint", "runs/fmnist", "--out", "fmnist.onnx"]) == 0
    assert main(["train", "--resume", "runs/fmnist", "--epochs", "1", "--quiet"]) == 0, capsys.readouterr().err

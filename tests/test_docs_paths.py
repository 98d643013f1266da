"""Every file the documentation names is in the repository.

The rule, applied to every Markdown file of the repository (README.md, docs/, benchmarks/,
data/README.md):

* **Repository paths.** Any text, in prose, `code`, fenced blocks or links, that starts
  with one of the repository's folders and a slash (`experiment/`, `protocols/`, `docs/`,
  `tests/`, `benchmarks/`, `scripts/`, `stimuli/`, and `rigs/`, which the docs once used
  for rig files and the repository does not have) must exist; a glob (`*`) must match at
  least one file. Not checked:
  - paths with a placeholder: `<...>`, `{...}`, `...`, `sub-` (a BIDS run's output), or a
    segment in capitals such as `PORT`, `DIR`, `RUN_DIR`;
  - what commands write at run time: `data/` and `plans/` are not repository folders,
    and `benchmarks/results/quick/` is written by `make bench` with `--quick`;
  - ```text blocks, which show program output for an example file (`protocols/x.yaml`);
  - a path inside another project's address (`github.com/org/repo/docs/...`, `../x`):
    only a path that does not follow `/`, `.`, `-` or a letter counts.
* **Links.** A relative link target `[...](target)` is resolved from the Markdown file's
  folder and must exist.
* **Other documents.** A Markdown file named anywhere (`devices.md`, `results.md`) must be
  one of the repository's, by its path from the file, from the root, or by its name.
* **Nothing outside the checkout.** No absolute path into a machine (`/work/`, `/home/`,
  `/Users/`) and no sibling checkout: a `../NAME` path whose NAME is not a top-level folder
  of this repository (`../stimuli` from a protocol is fine).

The last two rules also hold for the comments and docstrings of the package and the
shipped protocols (`experiment/**/*.py`, `protocols/*.yaml`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("experiment", "protocols", "docs", "tests", "benchmarks", "scripts", "stimuli", "rigs")
RUNTIME_OUTPUTS = ("benchmarks/results/quick/",)
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "node_modules", ".pytest_cache", ".hypothesis", "data"}

PATH = re.compile(r"(?<![\w./~-])((?:%s)/[\w./*<>{}@+-]*)" % "|".join(FOLDERS))
LINK = re.compile(r"\]\(([^)\s]+)\)")
MD_NAME = re.compile(r"(?<![\w/.-])((?:\.\./|[\w-]+/)*[\w.-]+\.md)\b")
OUTSIDE = re.compile(r"(?<![\w.])(/work/|/home/|/Users/)")
SIBLING = re.compile(r"(?<![\w./])(?:\.\./)+([\w-]+)")     # ../NAME, ../../NAME, ...
TOP_LEVEL = {p.name for p in ROOT.iterdir()}
TEXT_BLOCK = re.compile(r"^```text\n.*?^```", flags=re.S | re.M)


def _markdown_files() -> list[Path]:
    found = [p for p in ROOT.rglob("*.md")
             if not (set(p.relative_to(ROOT).parts[:-1]) & SKIP_DIRS) and not any(
                 part.endswith(".egg-info") for part in p.parts)]
    readme = ROOT / "data" / "README.md"
    return sorted(found + ([readme] if readme.exists() else []))


def _source_files() -> list[Path]:
    return sorted([*ROOT.joinpath("experiment").rglob("*.py"), *ROOT.joinpath("protocols").glob("*.yaml")])


MARKDOWN = _markdown_files()
MD_NAMES = {p.name for p in MARKDOWN}


def _placeholder(path: str) -> bool:
    if any(mark in path for mark in ("<", ">", "{", "}", "...", "sub-")):
        return True
    return any(re.fullmatch(r"[A-Z][A-Z0-9_]*", seg) for seg in path.split("/") if seg)


def _exists(path: str) -> bool:
    if "*" in path:
        return any(ROOT.glob(path.rstrip("/")))
    return (ROOT / path).exists()


def repository_paths(text: str) -> list[str]:
    """The repository-relative paths a Markdown text names that the rule checks."""
    text = TEXT_BLOCK.sub("", text)
    out = []
    for m in PATH.finditer(text):
        path = m.group(1).rstrip(".,;:")
        if _placeholder(path) or path.startswith(RUNTIME_OUTPUTS):
            continue
        out.append(path)
    return out


def missing_in(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    problems = [f"{p} (no such file)" for p in repository_paths(text) if not _exists(p)]
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):
            continue
        if not (doc.parent / target.split("#", 1)[0]).exists():
            problems.append(f"{target} (link target not found from {doc.parent.relative_to(ROOT)}/)")
    problems += _outside(text)
    return problems


def _outside(text: str) -> list[str]:
    problems = [f"{m.group(1)} (outside the repository)" for m in OUTSIDE.finditer(text)]
    problems += [f"{m.group(0)} (outside the repository)" for m in SIBLING.finditer(text)
                 if m.group(1) not in TOP_LEVEL]
    for m in MD_NAME.finditer(text):
        name = m.group(1)
        if name.startswith("../") or Path(name).name not in MD_NAMES:
            problems.append(f"{name} (not a document of this repository)")
    return problems


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_document_names_exists(doc: Path) -> None:
    assert missing_in(doc) == []


@pytest.mark.parametrize("source", _source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_and_protocols_point_only_inside_the_repository(source: Path) -> None:
    assert _outside(source.read_text(encoding="utf-8")) == []


def test_the_rule_catches_what_it_is_for() -> None:
    assert repository_paths("cuedpain rig-check --rig rigs/scanner3T.yaml") == ["rigs/scanner3T.yaml"]
    assert not _exists("rigs/scanner3T.yaml")
    assert repository_paths("`protocols/rig-example.yaml`, see docs/calibration.md.") == [
        "protocols/rig-example.yaml", "docs/calibration.md"]
    assert repository_paths("cuedpain report data/sourcedata/sub-P01/x --out plans/P01 --cuff line:PORT") == []
    assert repository_paths("`experiment/cuff/<name>.py`, experiment/DIR/x, github.com/a/b/docs/x.rst") == []
    assert repository_paths("```text\nprotocols/x.yaml:3:1: bad\n```\n") == []
    assert _exists("experiment/cuff/*_driver.py") and not _exists("experiment/cuff/*_nothing.py")
    assert _outside("see /home/someone/notes and ../sibling/x, not ../stimuli or ../../protocols") == [
        "/home/ (outside the repository)", "../sibling (outside the repository)"]
    assert _outside("see paradigm.md section 2") == ["paradigm.md (not a document of this repository)"]
    assert _outside("docs/cuff-protocol.md and README.md") == []

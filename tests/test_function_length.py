"""Short functions where a session's safety and timing live: the trial loop, the Station
and the cuff supervisor. A function longer than about 40 lines hides its steps; split it
into named ones (issue #13)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 40
#: the trial loop and the run around it, the session (the Station and all it owns) and the cuff supervisor
WATCHED = ("experiment/procedures/run", "experiment/station", "experiment/cuff/safety.py")


def long_functions(paths: list[Path], max_lines: int = MAX_LINES) -> list[str]:
    """`file:line name (n lines)` for each function or method longer than `max_lines`
    (from its `def` or first decorator to its last line, docstring included)."""
    out: list[str] = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = (node.end_lineno or node.lineno) - first + 1
                if n > max_lines:
                    out.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    return out


def _watched() -> list[Path]:
    paths: list[Path] = []
    for name in WATCHED:
        p = ROOT / name
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return paths


def test_no_long_functions_in_the_trial_loop_the_station_and_the_cuff_supervisor() -> None:
    paths = _watched()
    assert len(paths) >= 15 and all(p.is_file() for p in paths)
    assert long_functions(paths) == []


def test_the_measure_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(45))
    (tmp_path / "long.py").write_text(f"@staticmethod\ndef long() -> None:\n{body}\n\n\ndef short() -> None:\n    pass\n")
    found = long_functions([tmp_path / "long.py"], max_lines=40)
    assert len(found) == 1 and "long (47 lines)" in found[0]

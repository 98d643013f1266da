"""Protocol variants for tests: the reference protocols as dicts, edited and re-validated."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from experiment.protocol.model import Protocol, parse_protocol

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "protocols"
DEMO = PROTOCOLS / "demo.yaml"
LOGGIA = PROTOCOLS / "loggia2014.yaml"


def load_dict(path: Path = DEMO) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _steps(path: str) -> list[str | int]:
    return [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"[^.\[\]]+|\[\d+\]", path)]


def edited(data: dict, **changes: Any) -> dict:
    """A deep copy with dotted paths set, e.g. edited(d, **{"scan.n_volumes": 10}); DELETE removes."""
    out = copy.deepcopy(data)
    for path, value in changes.items():
        *parents, last = _steps(path)
        node = out
        for step in parents:
            node = node[step]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return out


DELETE = object()


def protocol_from(data: dict, *, file: str = "<test>") -> Protocol:
    """Validate a protocol dict as if it were a file in protocols/ (so ../stimuli resolves)."""
    return parse_protocol(yaml.safe_dump(data, sort_keys=False), file=file, base_dir=PROTOCOLS)

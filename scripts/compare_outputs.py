"""Compare every output of two dataset roots, ignoring only version and time fields.

    python scripts/compare_outputs.py BEFORE_ROOT AFTER_ROOT

Used to show that a restructure changed no behaviour: run the same headless dry runs
(`cuedpain run P --participant ref --dry-run --headless --data ROOT`, virtual clock,
seeded simulated devices) with the code before and after, then compare. Files are
compared byte for byte after normalising what legitimately differs between two runs
of the same inputs at another time or revision:

* JSON and JSON Lines: the values of keys that hold a wall time, a software version or
  revision, package versions, the platform, and identities derived from them (run UID,
  hashes and sizes of the logs whose headers carry those times); wall times written inside
  text (a calibration's creation time in a run's pressure description: `2026-01-02T09:15+01:00`);
* `.gz`: compared decompressed; `.mat`: compared as arrays (its header holds a time);
* `report.html`: embedded images, wall times and the lines that print the times and versions.

Prints one line per file that differs (with the first differing line) and exits 1 if any
file differs or exists on one side only; exit 0 means: identical but for those fields.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

VOLATILE_KEYS = frozenset({
    "start_wall", "end_wall", "created", "at", "revision", "Revision", "version", "Version", "packages",
    "platform", "python", "operating_system", "run_uid", "RunUID", "sha256", "bytes", "software_revision",
    "calibration_created",
})
#: an ISO 8601 wall time with its offset, inside a string
WALL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?([+-]\d\d:\d\d|Z)")


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<volatile>" if k in VOLATILE_KEYS else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        return WALL_TIME.sub("<wall time>", value)
    return value


def _text(path: Path) -> str:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        mat = loadmat(path)
        return repr({k: v for k, v in sorted(mat.items()) if not k.startswith("__")})
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.dumps(_scrub(json.loads(text)), indent=1, sort_keys=True)
    if path.suffix == ".jsonl":
        return "\n".join(json.dumps(_scrub(json.loads(line)), sort_keys=True) for line in text.splitlines())
    if path.suffix == ".html":
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "<png>", text)
        text = WALL_TIME.sub("<wall time>", text)
        return re.sub(r"<td>(started|ended|software|confirmed)</td><td>[^<]*</td>", r"<td>\1</td><td>-</td>", text)
    return text


def compare(before: Path, after: Path) -> list[str]:
    """One message per difference (empty: the two roots hold the same outputs)."""
    files_a = {p.relative_to(before) for p in before.rglob("*") if p.is_file()}
    files_b = {p.relative_to(after) for p in after.rglob("*") if p.is_file()}
    problems = [f"only in {before}: {p}" for p in sorted(files_a - files_b)]
    problems += [f"only in {after}: {p}" for p in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        a, b = _text(before / rel), _text(after / rel)
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines())) if x != y), None)
            where = f"line {first + 1}" if first is not None else "length"
            problems.append(f"differs: {rel} ({where})")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
        return 2
    before, after = Path(argv[0]), Path(argv[1])
    problems = compare(before, after)
    n = sum(1 for p in before.rglob("*") if p.is_file())
    for p in problems:
        print(p)
    print(f"{n} files compared: " + ("identical but for version and time fields" if not problems
                                     else f"{len(problems)} difference(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

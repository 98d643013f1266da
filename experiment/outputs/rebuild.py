"""`cuedpain rebuild RUN_DIR`: derive every output of a run again from its event log.

For a run that was aborted, killed or whose end-of-run writing failed. The raw logs are
only read; the run's own derived files are replaced atomically; files of other runs and
dataset-level files that exist are left alone. An incomplete log (no end record) gives
outputs up to the last record, marked incomplete, with where the run stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiment.outputs.report import write_report
from experiment.outputs.writer import OutputPaths, data_root_of, load_run, write_run_outputs


def rebuild(run_dir: Path) -> tuple[OutputPaths, Path]:
    """Rebuild the outputs and the QC report of one run directory."""
    load_run(run_dir)  # a clear InputError before anything else when there is no valid log
    paths = write_run_outputs(run_dir, data_root=data_root_of(run_dir))
    return paths, write_report(run_dir)


def command(args: argparse.Namespace) -> int:
    paths, report = rebuild(Path(args.run_dir))
    out = sys.stdout
    out.write(f"run: {paths.status.summary()}\n")
    out.write(f"timing: {paths.timing_summary}\n")
    for label, p in (("events", paths.events_tsv), ("cuff pressure", paths.stim_tsv),
                     ("trials", paths.trials_csv), ("provenance", paths.provenance),
                     ("exports", paths.exports.directory), ("QC report", report)):
        if p is not None:
            out.write(f"{label}: {p}\n")
    for note in paths.notes:
        out.write(f"note: {note}\n")
    return 0

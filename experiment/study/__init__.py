"""The study: every participant, run and calibration of a dataset root, read together.

* `participants` - the lab's participant fields (group, age, ...) kept in the root's
  participants.tsv and its sidecar participants.json, and the one call that sets them;
* `annotations` - discarding a run (and taking that back): an append-only
  `annotations.jsonl` in the run's directory and the session's BIDS scans.tsv;
* `reader` - reads the dataset root into a `Study` snapshot (shell: file reads only, never
  writes), naming what it cannot read instead of stopping;
* `qc`, `aggregate`, `plans` - pure: per-run quality flags, the tables by group, runs
  missing from visit plans;
* `figures`, `page`, `writer` - the plots, the self-contained HTML page, the TSV tables.

May import experiment.outputs, experiment.log, experiment.protocol, the pulse checks
(experiment.scanner.pulsecheck), the calibration result reader
(experiment.procedures.calibration.results) and the ground modules; never a device, the
Station or experiment.cli. Files and columns: docs/outputs.md.
"""

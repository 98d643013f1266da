"""Everything derived from a run's event log: BIDS files, exports, provenance, report.

`experiment.outputs.derive` turns the log into tables (pure); the other modules write
them. The runner and `cuedpain rebuild` call `experiment.outputs.writer.write_run_outputs`.
File formats are documented in docs/outputs.md.
"""

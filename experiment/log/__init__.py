"""The append-only run log: the file format (`eventlog`) and its typed records.

It is the contract between what runs a session (experiment.station, experiment.procedures)
and what derives the outputs (experiment.outputs). May import: experiment.errors. `records`
(the typed records) imports nothing of cuedpain, so the cuff supervisor, below the Station,
can type what it records.
"""

"""The imperative shell of a session: the Station that owns its hardware and bookkeeping.

Clock choice, display, console, devices opened per mode (real, dry run, headless), the
rating input, the log, signal handling and what the operator confirms. May import:
experiment.protocol, experiment.cuff, experiment.scanner, experiment.log,
experiment.outputs (dataset layout and writers), and the ground modules.
"""

"""What is done on a Station: a run (`run`), a calibration (`calibration`), a rig check,
and the validate/plan commands on a protocol. May import: experiment.station and
everything below it; never experiment.cli.
"""

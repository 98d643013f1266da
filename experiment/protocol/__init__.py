"""The science and the site, as validated values: pure, no clock, no devices.

Protocol files (`model`), rig files (`rig`), the device-spec grammar, the YAML loader
with positions (`yamlload`) and the field-spec machinery (`schema`), the schedule a
protocol compiles to (`schedule`, with the cuff timing model of `cuff_timing`) and its
design efficiency (`design`). May import: experiment.errors, experiment.units.
"""

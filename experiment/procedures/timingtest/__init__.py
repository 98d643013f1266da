"""`cuedpain timing-test`: the rig's screen measured with the protocol's cues, and a light sensor's lag.

`figures.py` is pure (figures and verdict); `procedure.py` runs on a Station.
"""

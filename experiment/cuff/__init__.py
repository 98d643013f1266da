"""Pressure-cuff devices: one interface, drivers for CUFF/1 and CPAR, simulated twins."""

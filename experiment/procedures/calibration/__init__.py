"""The calibration procedure, its pure steps and fit, its simulated participant, and the
calibration result files that a run takes its pressure from."""

"""cuedpain: an experiment runner for cued pain-anticipation fMRI tasks."""

__version__ = "0.1.0"

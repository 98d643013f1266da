"""The run procedure: pre-flight, the trial loop, every exit path, outputs."""

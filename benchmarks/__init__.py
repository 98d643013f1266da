"""Reproducible timing benchmarks of the cuedpain runner (see benchmarks/README.md).

`python -m benchmarks.run [--quick]` runs them all and writes benchmarks/results/.
"""

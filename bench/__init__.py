"""The benchmark harness: `python -m bench` (or `make bench`) measures everything on this
machine in one go and reports each result as a ratio to a baseline measured in the same run,
so that numbers from different machines (or a busy one) can still be compared.

It is a benchmark, not a test: nothing here asserts a time. Targets are reported as reached
or not; see docs/benchmarks.md for the method.
"""

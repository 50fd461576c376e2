"""Throwaway local services for the demo, tests and benchmarks."""

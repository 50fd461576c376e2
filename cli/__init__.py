"""The gatehouse command line: what people, scripts and AI agents drive."""

__version__ = "0.1.0"

"""The gatehouse command line: what people, scripts and AI agents drive."""

from gatehouse import __version__

__all__ = ["__version__"]

"""The Gatehouse agent: dials out to the control plane, holds target credentials, opens targets."""

from gatehouse import __version__

__all__ = ["__version__"]

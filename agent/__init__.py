"""The Gatehouse agent: dials out to the control plane, holds target credentials, opens targets."""

__version__ = "0.1.0"

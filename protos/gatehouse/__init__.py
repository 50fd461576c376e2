"""Gatehouse gRPC contract (generated code lives in gatehouse.v1), and the release's version.

`__version__` is the one place the version is written: pyproject.toml reads it for the
package's metadata, and the CLI and the agent send it to the control plane.
"""

__version__ = "0.1.0"

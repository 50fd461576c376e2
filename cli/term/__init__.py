"""Terminal streams in the CLI (ssh, shell): the session stream and the local SSH server."""

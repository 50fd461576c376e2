"""`http` connections in the CLI: `exec -- METHOD /path` and the `connect` HTTP listener."""

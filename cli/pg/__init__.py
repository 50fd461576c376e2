"""PostgreSQL in the CLI: `exec -c SQL` and the local listener of `connect`."""

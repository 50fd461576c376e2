"""MySQL for the CLI: `exec -c SQL` (``query``) and the `connect` listener (``listen``)."""

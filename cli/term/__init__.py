"""Terminal streams in the CLI (ssh, shell): the session stream, `exec` of a command and the
local SSH server."""

TERMINAL_TYPES = frozenset({"ssh", "shell"})
"""Connection types whose sessions carry the terminal protocol after `opened` (`gatehouse
ssh` refuses the others)."""

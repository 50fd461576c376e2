"""The terminal-stream codec: commands, their input, output and exit, for `ssh` and `shell`."""

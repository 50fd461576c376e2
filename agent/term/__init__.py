"""Commands and terminals on the target: SSH (asyncssh) and local shell commands."""

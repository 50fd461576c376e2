"""CLI failures and their exit codes (DESIGN §9): 1 refused or failed, 2 usage error, 3 a
review is pending (`exec --no-wait`)."""

from __future__ import annotations

REFUSED = 1
USAGE = 2
PENDING = 3


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

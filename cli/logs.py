"""Process logging: `--log-format text` for people, `json` for a log pipeline.

A JSON line carries time (UTC, RFC 3339), level, logger, message, the session id when the
line is about one (wire/logcontext.py), and the exception's traceback when there is one. It
never carries a session's payload: modules log what happened, not what was sent.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from wire.logcontext import SESSION_ID


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        session = getattr(record, "session_id", None) or SESSION_ID.get()
        if session:
            line["session_id"] = session
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(verbose: bool, log_format: str = "text") -> None:
    """Root logging to stderr, once; `log_format` is text or json."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)

"""The session a log line is about, carried by the task that serves it.

Set where a session's task starts (the agent's `serve_session`, the control plane's relay);
the JSON log format (cli/logs.py) adds it to every line that task logs. A context variable
rather than an argument: asyncio copies it into the tasks a session starts.
"""

from __future__ import annotations

from contextvars import ContextVar

SESSION_ID: ContextVar[str | None] = ContextVar("gatehouse_session_id", default=None)

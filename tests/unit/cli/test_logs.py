"""JSON log lines: one object each, the fields a pipeline needs, the session when known."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from cli.logs import JsonFormatter
from controlplane.relay.tunnel import Tunnels
from wire.logcontext import SESSION_ID


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            info = sys.exc_info()
    return logging.LogRecord(
        "controlplane.relay", logging.WARNING, __file__, 1, message, args, info
    )


def test_a_line_is_one_json_object_with_time_level_logger_message() -> None:
    line = JsonFormatter().format(record('agent %s said "hi"\nthen left', "vpc-1"))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "warning"
    assert parsed["logger"] == "controlplane.relay"
    assert parsed["message"] == 'agent vpc-1 said "hi"\nthen left'
    assert parsed["time"].endswith("+00:00")
    assert "session_id" not in parsed


def test_exceptions_are_kept_in_the_line() -> None:
    parsed = json.loads(JsonFormatter().format(record("failed", exc=True)))
    assert "ValueError: boom" in parsed["exception"]


async def test_a_sessions_task_logs_its_id_and_others_do_not() -> None:
    tunnels = Tunnels()
    lines: list[dict[str, object]] = []

    async def session() -> None:
        tunnels.expect("s-1", "vpc-1")
        lines.append(json.loads(JsonFormatter().format(record("relaying"))))

    async def other() -> None:
        await asyncio.sleep(0)
        lines.append(json.loads(JsonFormatter().format(record("unrelated"))))

    await asyncio.gather(asyncio.create_task(session()), asyncio.create_task(other()))
    by_message = {line["message"]: line for line in lines}
    assert by_message["relaying"]["session_id"] == "s-1"
    assert "session_id" not in by_message["unrelated"]
    assert SESSION_ID.get() is None  # the test's own context was not touched


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_setup_logging_installs_one_handler(fmt: str) -> None:
    from cli.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging(False, fmt)
        setup_logging(False, fmt)
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter) == (fmt == "json")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)

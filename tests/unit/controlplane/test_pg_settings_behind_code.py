"""Text is never read under settings that code may have changed unreported.

PostgreSQL (14 and later) reports a changed `client_encoding` or `standard_conforming_strings`
only at the next ReadyForQuery, never at a Flush. Code runs not only at an Execute: a Bind
plans the statement (an IMMUTABLE function is folded) and reads its parameters (a domain's
CHECK), and the data of a COPY of the extended protocol runs its row triggers while the target
ignores the Syncs sent with its Execute. Text with a non-ASCII character or a backslash behind
any of them, before a Sync the target answers, is refused: read as UTF-8 by the gateway and as
SJIS by the server, `HIDDEN` is a harmless SELECT to the guardrail and a DELETE to the server.
"""

import asyncio
from pathlib import Path

import pytest

import tests.unit.controlplane.test_pg_inspector as _inspector_tests
from controlplane.audit.events import SessionContext
from controlplane.audit.writer import AuditWriter
from controlplane.policy.document import Guardrail
from controlplane.policy.guardrails import SqlGuard
from controlplane.relay.pg.inspector import PgInspector
from tests.unit.controlplane.test_pg_inspector import (
    FLUSH,
    STARTUP,
    Forwarded,
    Mark,
    Reply,
    Wakes,
    bind,
    error_of,
    execute,
    login_reply,
    of_type,
    parse,
    stored,
)
from wire.pg import messages as pgm
from wire.pg.framing import ProtocolError

ctx = _inspector_tests.ctx  # the session fixture of the inspector's tests

# As the gateway reads it (UTF-8): one SELECT whose string literal swallows the DELETE.
# As a server in client_encoding SJIS reads the same bytes: C3 is a half-width katakana, 81 5C
# one double-byte character that swallows the backslash, so the literal ends and the
# data-modifying CTE is real.
HIDDEN = "WITH a AS (SELECT E'\u00c1\\'), d AS (DELETE FROM t RETURNING 1) SELECT 1 --') SELECT 1"
COPY_IN_RESPONSE = b"G\x00\x00\x00\x07\x00\x00\x01\x00\x00"
COPY_DATA_AND_DONE = b"d\x00\x00\x00\x061\n" + b"c\x00\x00\x00\x04"


def no_delete() -> SqlGuard:
    return SqlGuard([Guardrail.model_validate({"name": "g", "deny_statements": ["DELETE"]})])


async def started(ctx: SessionContext, writer: AuditWriter, forward: Forwarded) -> PgInspector:
    inspector = PgInspector(ctx, writer, Wakes(), guard=no_delete(), forward=forward)
    await inspector.from_client(STARTUP)
    await inspector.from_agent(login_reply().frame())
    return inspector


def refused(told: list[bytes], db_path: Path) -> None:
    """The client was told why and what to do; the trail holds the refusal."""
    error = error_of(told)
    assert error.sqlstate == "22021" and "send a Sync before this statement" in error.message
    last = of_type(stored(db_path), "db.query")[-1]
    assert last["decision"]["result"] == "deny", last


async def in_extended_copy(inspector: PgInspector) -> None:
    """Start a COPY FROM STDIN as libpq does (Parse/Bind/Execute/Sync): the target answers
    with CopyInResponse and ignores that Sync, reading COPY data from now on."""
    copy = parse("copy c from stdin") + bind([]) + execute() + pgm.sync()
    assert await inspector.from_client(copy) == copy
    await inspector.from_agent(Reply().parsed().bound().ack(COPY_IN_RESPONSE, Mark.COPY_IN).frame())


def test_the_hidden_text_is_a_delete_as_an_sjis_server_reads_it() -> None:
    assert no_delete().check(HIDDEN).allowed
    assert not no_delete().check(HIDDEN.encode().decode("shift_jis")).allowed


async def test_text_behind_a_bind_that_runs_code_is_refused(
    ctx: SessionContext, writer: AuditWriter, db_path: Path
) -> None:
    early = Forwarded()
    inspector = await started(ctx, writer, early)
    # `d` is a domain whose CHECK may call set_config('client_encoding', 'SJIS', false).
    setup = parse("select $1::d", "chk") + pgm.sync()
    assert await inspector.from_client(setup) == setup
    await inspector.from_agent(Reply().parsed().ready().frame())

    changes = bind([b"x"], statement="chk")  # the server may switch to SJIS while binding
    hidden = parse(HIDDEN) + bind([]) + execute() + pgm.sync()
    assert await asyncio.wait_for(inspector.from_client(changes + hidden), 5) == b""
    assert early == []  # nothing of the pipeline reached the target
    refused(inspector.take_synthetic(), db_path)


async def test_text_behind_the_data_of_an_extended_copy_is_refused(
    ctx: SessionContext, writer: AuditWriter, db_path: Path
) -> None:
    inspector = await started(ctx, writer, Forwarded())
    await in_extended_copy(inspector)
    # The target ignored the Sync above; its triggers run on this data.
    data = COPY_DATA_AND_DONE + FLUSH
    assert await inspector.from_client(data) == data
    await inspector.from_agent(Reply().complete("COPY 1", 1).frame())  # no ReadyForQuery

    hidden = parse(HIDDEN) + bind([]) + execute() + pgm.sync()
    # Only the Sync goes on: the target answers it (and ends the pipeline it is in), nothing
    # of the refused statement reaches it.
    assert await asyncio.wait_for(inspector.from_client(hidden), 5) == pgm.sync()
    # The refusal reaches the client in order, behind the answer to what went before.
    refused(await inspector.from_agent(Reply().ready().frame()), db_path)
    # That Sync was answered, with the settings: text is read again.
    again = parse("select 'é'") + bind([]) + execute() + pgm.sync()
    assert await asyncio.wait_for(inspector.from_client(again), 5) == again


async def test_a_simple_query_behind_the_data_of_an_extended_copy_ends_the_session(
    ctx: SessionContext, writer: AuditWriter, db_path: Path
) -> None:
    inspector = await started(ctx, writer, Forwarded())
    await in_extended_copy(inspector)
    assert await inspector.from_client(COPY_DATA_AND_DONE) == COPY_DATA_AND_DONE
    await inspector.from_agent(Reply().complete("COPY 1", 1).frame())

    # The COPY's Syncs were ignored, so its pipeline is still open: the session ends, and
    # nothing of the Query reaches the target.
    with pytest.raises(ProtocolError, match="send Sync first"):
        await asyncio.wait_for(inspector.from_client(pgm.query(HIDDEN)), 5)
    assert "DELETE" not in str(of_type(stored(db_path), "db.query"))


async def test_a_simple_querys_copy_is_reported_by_its_own_ready_for_query(
    ctx: SessionContext, writer: AuditWriter, db_path: Path
) -> None:
    """psql's \\copy: the Query's own ReadyForQuery follows its data and reports what the COPY
    changed, so text after it is read, once that answer came (no Sync needed)."""
    early = Forwarded()
    inspector = await started(ctx, writer, early)
    copy = pgm.query("copy c from stdin")
    assert await inspector.from_client(copy) == copy
    await inspector.from_agent(Reply().ack(COPY_IN_RESPONSE, Mark.COPY_IN).frame())
    assert await inspector.from_client(COPY_DATA_AND_DONE) == COPY_DATA_AND_DONE

    text = pgm.query("select 'é'")
    reading = asyncio.create_task(inspector.from_client(text))
    await asyncio.sleep(0.05)
    assert not reading.done()  # it waits for the COPY's answer and its settings
    await inspector.from_agent(Reply().complete("COPY 1", 1).ready().frame())
    assert await asyncio.wait_for(reading, 5) == text
    assert of_type(stored(db_path), "db.query")[-1]["decision"]["result"] == "allow"

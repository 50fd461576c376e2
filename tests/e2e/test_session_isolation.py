"""Malformed PostgreSQL input hurts only the session that sent it.

Hypothesis generates frontend byte streams that are wrong at a known point: a valid startup and
some well-formed messages, then a message with a type no frontend sends, a length word that
cannot be, a body its type cannot have, or a size past every limit; or garbage where the
startup should be. They go to the `gatehouse connect` listener over raw TCP, and straight to
the control plane's ClientService.Session over gRPC. Meanwhile a healthy psycopg session on the
same listener keeps running queries. Each malformed session must end (the gateway closes it,
with a FATAL 08P01 when it says anything), the healthy one must never notice, no process may
die, no target connection may outlive its session, and the audit trail must record each end
as a protocol error, hold no garbage as a statement, and still verify.

The tests at the end pin down bugs these tests found (fixed since). The generated streams were
written to steer clear of them (see the comments) and could now be widened.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from devenv.stack import Connect
from gatehouse.v1 import client_pb2, client_pb2_grpc
from tests.e2e.conftest import Stack

FRONTEND_TAGS = frozenset(b"BCcdDEFfHpPQSX")  # every message type a 3.0 frontend may send
PROTOCOL_3 = 196608
SSL_CODE, GSSENC_CODE, CANCEL_CODE = 80877103, 80877104, 80877102
MAX_STARTUP = 10000  # PostgreSQL's own limit on a startup packet
PG_MESSAGE_LIMIT = 0x3FFFFFFF  # PostgreSQL refuses longer messages itself
ENDS_WITHIN = 5.0  # seconds a malformed session may take to end (it takes milliseconds)

# Hypothesis: a fixed budget, nothing written to the repository (.hypothesis/), and no
# shrinking: a failing example can cost ENDS_WITHIN seconds a try, and streams are short anyway.
FUZZ = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- the frontend protocol, built by hand ----------------------------------------------------


def message(tag: bytes, body: bytes, length: int | None = None) -> bytes:
    """A tagged message; `length` overrides the length word (which counts itself)."""
    return tag + struct.pack("!i", len(body) + 4 if length is None else length) + body


def startup(application_name: str) -> bytes:
    params = {"user": "fuzzer", "database": "pg", "application_name": application_name}
    body = struct.pack("!i", PROTOCOL_3)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def backend_messages(data: bytes) -> list[tuple[str, bytes]]:
    """The complete messages in what the gateway sent."""
    messages, pos = [], 0
    while pos + 5 <= len(data):
        (length,) = struct.unpack_from("!i", data, pos + 1)
        if length < 4 or pos + 1 + length > len(data):
            break
        messages.append((chr(data[pos]), data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return messages


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for item in body.split(b"\0"):
        if item:
            fields[chr(item[0])] = item[1:].decode("utf-8", errors="replace")
    return fields


def fatal_errors(data: bytes) -> list[dict[str, str]]:
    errors = [error_fields(body) for tag, body in backend_messages(data) if tag == "E"]
    return [e for e in errors if e.get("S") == "FATAL"]


def readies(data: bytes) -> int:
    """How many ReadyForQuery messages the gateway sent."""
    return sum(tag == "Z" for tag, _ in backend_messages(data))


# ---- what gets generated ---------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """Bytes wrong at a known point: `good` (well-formed), then `bad`, then anything."""

    kind: str
    good: bytes
    bad: bytes
    tail: bytes
    # The well-formed statements of `good`: the only ones the trail may show for the session.
    statements: tuple[str, ...] = ()
    startup: bool = True  # a valid startup precedes `good`
    answers: int = 0  # the ReadyForQuery messages that answer `good`

    def wire(self) -> bytes:
        return self.good + self.bad + self.tail


# A dollar-quoted literal holds any text but NUL (and `$`, which could close the quote).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00$"), max_size=24)
EXTENDED_SQL = "select $1::text as fuzz_extended"


Part = tuple[bytes, tuple[str, ...], int]  # bytes, their statements, their ReadyForQuery count


def _simple(text: str) -> Part:
    sql = f"select $q${text}$q$ as fuzz_simple"
    return message(b"Q", cstring(sql)), (sql,), 1


def _extended(text: str) -> Part:
    value = text.encode()
    parse = message(b"P", cstring("") + cstring(EXTENDED_SQL) + struct.pack("!h", 0))
    bind = message(
        b"B",
        cstring("") + cstring("") + struct.pack("!hhi", 0, 1, len(value)) + value + b"\0\0",
    )
    execute = message(b"E", cstring("") + struct.pack("!i", 0))
    return parse + bind + execute + message(b"S", b""), (EXTENDED_SQL,), 1


FLUSH = message(b"H", b"")
FUNCTION_CALL = message(b"F", struct.pack("!ihhh", 1, 0, 0, 0))  # the gateway refuses it

WELL_FORMED = st.one_of(
    TEXT.map(_simple),
    TEXT.map(_extended),
    st.just((message(b"S", b""), (), 1)),  # Sync
    st.just((FLUSH, (), 0)),
    st.binary(max_size=16).map(lambda b: (message(b"d", b), (), 0)),  # CopyData, out of COPY
    st.just((FUNCTION_CALL, (), 1)),
)


def _bodyless(data: bytes) -> bytes:
    return data.replace(b"\0", b"")


# Tag 0 is left out: tests/e2e/test_session_isolation.py::test_a_zero_type_byte_... covers it.
UNKNOWN_TAG = st.builds(
    lambda tag, body: ("unknown type", message(bytes([tag]), body)),
    st.integers(1, 255).filter(lambda t: t not in FRONTEND_TAGS),
    st.binary(max_size=64),
)
BAD_LENGTH = st.builds(
    lambda tag, length: ("length below 4", message(bytes([tag]), b"", length)),
    st.sampled_from(sorted(FRONTEND_TAGS)),
    st.integers(-(2**31), 3),
)
HUGE_LENGTH = st.builds(
    lambda tag, length, body: ("huge length", message(bytes([tag]), body, length)),
    st.sampled_from(sorted(FRONTEND_TAGS)),
    st.integers(PG_MESSAGE_LIMIT + 1, 2**31 - 1),
    st.binary(max_size=64),
)
INVALID_UTF8 = st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
BAD_BODY = st.one_of(
    st.builds(  # a string without its terminator
        lambda tag, body: (f"{chr(tag)} unterminated", message(bytes([tag]), _bodyless(body))),
        st.sampled_from(b"QPBE"),
        st.binary(max_size=64),
    ),
    st.builds(
        lambda text, extra: ("Q trailing bytes", message(b"Q", cstring(text) + extra)),
        TEXT,
        st.binary(min_size=1, max_size=16),
    ),
    st.builds(
        lambda text, bad: ("Q invalid UTF-8", message(b"Q", text.encode() + bad + b"\0")),
        TEXT,
        INVALID_UTF8,
    ),
)


@st.composite
def cut_short(draw: st.DrawFn) -> tuple[str, bytes]:
    """A Query whose length word ends inside its text: the rest reads as the next message."""
    text = draw(st.text(st.characters(codec="ascii", min_codepoint=32), min_size=2, max_size=40))
    keep = draw(st.integers(1, len(text) - 1))
    return "Q cut short", message(b"Q", text[:keep].encode(), 4 + keep) + cstring(text[keep:])


OVERSIZED = st.builds(
    lambda size, tag: (
        "oversized",
        message(tag, b"\xff" * size + b"\0"),  # 'z' is no type; 'Q' is not UTF-8
    ),
    st.integers(300_000, 1_500_000),
    st.sampled_from([b"z", b"Q"]),
)
BAD_AFTER_STARTUP = st.one_of(
    UNKNOWN_TAG, BAD_LENGTH, HUGE_LENGTH, BAD_BODY, cut_short(), OVERSIZED
)


@st.composite
def after_startup(draw: st.DrawFn) -> Stream:
    prefix = draw(st.lists(WELL_FORMED, max_size=3))
    if any(p[0] == FLUSH for p in prefix):
        # The gateway's own answers wait forever behind a Flush: see the tests at the end.
        prefix = [p for p in prefix if p[0] != FUNCTION_CALL]
    kind, bad = draw(BAD_AFTER_STARTUP)
    return Stream(
        kind=kind,
        good=b"".join(p[0] for p in prefix),
        bad=bad,
        tail=draw(st.binary(max_size=32)),
        statements=tuple(s for p in prefix for s in p[1]),
        answers=sum(p[2] for p in prefix),
    )


def _untagged(code: int, body: bytes) -> bytes:
    return struct.pack("!ii", len(body) + 8, code) + body


BAD_STARTUP = st.one_of(
    st.builds(
        lambda length, rest: ("startup length", struct.pack("!i", length) + rest),
        st.one_of(st.integers(-(2**31), 7), st.integers(MAX_STARTUP + 1, 2**31 - 1)),
        st.binary(max_size=32),
    ),
    st.builds(
        lambda code, body: ("startup code", _untagged(code, body)),
        st.integers(-(2**31), 2**31 - 1).filter(
            lambda c: c >> 16 != 3 and c not in (SSL_CODE, GSSENC_CODE, CANCEL_CODE)
        ),
        st.binary(max_size=64),
    ),
    st.builds(  # a parameter list without its terminators
        lambda raw: ("startup parameters", _untagged(PROTOCOL_3, b"user\0" + _bodyless(raw))),
        st.binary(max_size=40),
    ),
)


@st.composite
def before_startup(draw: st.DrawFn) -> Stream:
    kind, bad = draw(BAD_STARTUP)
    return Stream(kind=kind, good=b"", bad=bad, tail=draw(st.binary(max_size=32)), startup=False)


# Always tried, whatever Hypothesis draws: one of each family.
FIRST, FIRST_STATEMENTS, _ = _simple("a statement before the bad message")
UNKNOWN_TYPE = Stream(
    "unknown type", FIRST, message(b"z", b"junk"), b"", FIRST_STATEMENTS, answers=1
)
HUGE = Stream("huge length", b"", message(b"Q", cstring("select 1"), 2**31 - 1), b"x")
OVERSIZED_QUERY = Stream("oversized", b"", message(b"Q", b"\xff" * 2_000_000 + b"\0"), b"")
NO_STARTUP = Stream("startup length", b"", struct.pack("!i", 2**31 - 1), b"junk", startup=False)


# ---- the healthy neighbour -------------------------------------------------------------------

HEALTHY_EXTENDED = "select $1::int + 1 as healthy, $2::text as tag"


@dataclass
class Healthy:
    """A long-lived psycopg session on the listener that keeps querying in a thread."""

    listener: Connect
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    queries: int = 0
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        dsn = f"host=127.0.0.1 port={self.listener.port} dbname=pg application_name=healthy"
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    row = conn.execute(
                        "select %s::int + 1 as healthy, %s::text as tag", (n, self.tag)
                    ).fetchone()
                    assert row == (n + 1, self.tag), row
                    row = conn.execute(f"select {n} as healthy_simple").fetchone()
                    assert row == (n,), row
                    self.queries += 2
                    self.stop.wait(0.01)
        except BaseException as exc:  # reported by the test, from its own thread
            self.errors.append(exc)

    @staticmethod
    def ran(seen: str) -> bool:
        """Whether `seen` is one of the healthy session's statements."""
        return seen == HEALTHY_EXTENDED or (
            seen.startswith("select ") and seen.endswith(" as healthy_simple")
        )


@contextmanager
def healthy_session(listener: Connect) -> Iterator[Healthy]:
    healthy = Healthy(listener)
    thread = threading.Thread(target=healthy.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while healthy.queries == 0 and not healthy.errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assert healthy.queries > 0, f"the healthy session never ran: {healthy.errors}"
        yield healthy
    finally:
        healthy.stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the healthy session hung"
    assert not healthy.errors, f"the healthy session failed: {healthy.errors!r}"


# ---- sending ---------------------------------------------------------------------------------


# The bad bytes go out once everything before them is answered: a bad message that meets an
# answer on its way to the client hits the race pinned down by the test at the end.


def tcp_exchange(port: int, app: str, stream: Stream) -> tuple[bytes, bool]:
    """Play `stream` on the listener and read until the gateway hangs up. Returns what the
    gateway sent, and whether it hung up cleanly (False: with a reset)."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=ENDS_WITHIN) as sock:
        try:
            if stream.startup:
                for part, answered in ((startup(app), 1), (stream.good, 1 + stream.answers)):
                    sock.sendall(part)
                    while readies(bytes(received)) < answered and (chunk := sock.recv(65536)):
                        received += chunk
            sock.sendall(stream.bad + stream.tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it may hang up before it has read everything
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            return bytes(received), False
        except TimeoutError:
            raise AssertionError(
                f"the session was not ended within {ENDS_WITHIN} s; got {bytes(received)!r}"
            ) from None
    return bytes(received), True


def assert_ended_with_protocol_error(received: bytes, clean: bool) -> None:
    fatal = fatal_errors(received)
    assert all(f.get("C") == "08P01" for f in fatal), fatal
    if clean:
        # A clean hang-up must say why, last.
        assert fatal, f"no FATAL before the hang-up: {received!r}"
        assert backend_messages(received)[-1][0] == "E"


def assert_alive(stack: Stack, listener: Connect) -> None:
    assert stack.controlplane.running, stack.controlplane.log()[-3000:]
    assert stack.agent.running, stack.agent.log()[-3000:]
    assert listener.running, listener.log()[-3000:]


# ---- the audit trail afterwards ----------------------------------------------------------------


def events_since(stack: Stack, after: int = 0) -> list[dict[str, Any]]:
    """`Stack.events()`, but split at newlines only. Statements here hold any text, and
    str.splitlines(), which Stack.events() uses, also breaks lines at U+0085, U+2028 and
    U+2029, which the NDJSON export rightly leaves unescaped inside JSON strings."""
    result = stack.cli("audit", "export", "--after", str(after))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.split("\n") if line]


def last_seq(stack: Stack) -> int:
    events = events_since(stack)
    return int(events[-1]["seq"]) if events else 0


def wait_for_ends(
    stack: Stack, after: int, sessions: Sequence[str], by: str
) -> list[dict[str, Any]]:
    """Events since `after`, once every session in `sessions` has its session.end. `by` names
    how `sessions` are given: "session_id" or "client" (the application_name prefix)."""
    deadline = time.monotonic() + 30
    while True:
        events = events_since(stack, after)
        ended = {e["session_id"] for e in events if e["type"] == "session.end"}
        ids = session_ids(events, sessions, by)
        if (len(ids) == len(sessions) and set(ids.values()) <= ended) or (
            time.monotonic() > deadline
        ):
            return events
        time.sleep(0.3)


def session_ids(events: list[dict[str, Any]], sessions: Sequence[str], by: str) -> dict[str, str]:
    if by == "session_id":
        started = {e["session_id"] for e in events if e["type"] == "session.start"}
        return {s: s for s in sessions if s in started}
    clients = {
        e["source"]["client"].split(" via ")[0]: e["session_id"]
        for e in events
        if e["type"] == "session.start"
    }
    return {s: clients[s] for s in sessions if s in clients}


def check_trail(
    stack: Stack,
    events: list[dict[str, Any]],
    streams: dict[str, Stream],
    ids: dict[str, str],
    healthy: Healthy,
) -> None:
    missing = set(streams) - set(ids)
    assert not missing, f"no session.start for {sorted(missing)[:5]}"
    ends = {e["session_id"]: e for e in events if e["type"] == "session.end"}
    stream_of = {ids[key]: stream for key, stream in streams.items()}
    for session_id, stream in stream_of.items():
        end = ends.get(session_id)
        assert end is not None, f"{stream.kind}: session {session_id} has no session.end"
        assert "protocol error" in end["reason"], (stream, end["reason"])
    by_session: dict[str, list[str]] = {}
    for e in events:
        if e["type"] == "db.query":
            by_session.setdefault(e["session_id"], []).append(e["request"]["statement"])
    for session_id, statements in by_session.items():
        stream = stream_of.get(session_id)
        if stream is None:  # the healthy session, nobody else
            assert all(healthy.ran(s) for s in statements), statements[:5]
        else:  # only its well-formed statements: garbage is never recorded as one
            extra = Counter(statements) - Counter(stream.statements)
            assert not extra, (stream, extra)
    verified = stack.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr


def app_backends(stack: Stack) -> int:
    with psycopg.connect(stack.pg.admin_dsn(), autocommit=True) as conn:
        row = conn.execute("select count(*) from pg_stat_activity where usename = 'app'").fetchone()
        return int(row[0]) if row else 0


def wait_for_backends(stack: Stack, expected: int) -> None:
    """Every target connection of an ended session is closed by the agent."""
    deadline = time.monotonic() + 15
    while (count := app_backends(stack)) > expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert count <= expected, f"{count - expected} target connections outlived their session"


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listener(stack: Stack) -> Iterator[Connect]:
    process = Connect.create(stack.controlplane, "pg", stack.base)
    process.start_and_wait()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client_stub(stack: Stack) -> Iterator[client_pb2_grpc.ClientServiceStub]:
    with grpc.insecure_channel(stack.controlplane.address) as channel:
        yield client_pb2_grpc.ClientServiceStub(channel)


# ---- the listener --------------------------------------------------------------------------


def test_malformed_streams_on_the_listener_end_only_their_own_session(
    stack: Stack, listener: Connect
) -> None:
    baseline = app_backends(stack)
    streams: dict[str, Stream] = {}
    with healthy_session(listener) as healthy:
        after = last_seq(stack)  # the healthy session has started: its start is before

        @settings(FUZZ, max_examples=80)
        @given(stream=st.one_of(after_startup(), before_startup()))
        @example(stream=UNKNOWN_TYPE)
        @example(stream=HUGE)
        @example(stream=OVERSIZED_QUERY)
        @example(stream=NO_STARTUP)
        def one(stream: Stream) -> None:
            event(stream.kind)  # pytest --hypothesis-show-statistics shows the mix
            app = f"fuzz-{uuid.uuid4().hex[:16]}"
            received, clean = tcp_exchange(listener.port, app, stream)
            assert_ended_with_protocol_error(received, clean)
            assert_alive(stack, listener)
            assert not healthy.errors
            if stream.startup:
                streams[app] = stream

        one()
    events = wait_for_ends(stack, after, list(streams), by="client")
    # Garbage where the startup belongs opens no session at all.
    assert sum(e["type"] == "session.start" for e in events) == len(streams)
    check_trail(stack, events, streams, session_ids(events, list(streams), "client"), healthy)
    wait_for_backends(stack, baseline)
    assert healthy.queries > 20


# ---- ClientService.Session over gRPC ---------------------------------------------------------


def grpc_exchange(
    stub: client_pb2_grpc.ClientServiceStub,
    token: str,
    label: str,
    stream: Stream,
    cuts: list[int],
) -> tuple[str, bytes, grpc.StatusCode]:
    """Open a session, play `stream` in data frames cut at `cuts`, read until the control
    plane ends the call. Returns the session id, what it sent and the call's status."""
    outbox: queue.Queue[client_pb2.ClientFrame | None] = queue.Queue()

    def frames() -> Iterator[client_pb2.ClientFrame]:
        while (frame := outbox.get()) is not None:
            yield frame

    def send(data: bytes) -> None:
        for chunk in split(data, cuts):
            outbox.put(client_pb2.ClientFrame(data=chunk))

    call = stub.Session(
        frames(), metadata=(("authorization", f"Bearer {token}"),), timeout=ENDS_WITHIN
    )
    received = bytearray()
    session_id = ""
    try:
        opening = client_pb2.SessionOpen(connection="pg", mode="connect", client=label)
        outbox.put(client_pb2.ClientFrame(open=opening))
        opened = next(call)
        assert opened.HasField("opened"), opened
        session_id = opened.opened.session_id
        if stream.startup:
            for part, answered in ((startup(label), 1), (stream.good, 1 + stream.answers)):
                send(part)
                while readies(bytes(received)) < answered:
                    received += next(call).data
        send(stream.bad + stream.tail)
        for frame in call:
            received += frame.data
        code = call.code()
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
    finally:
        outbox.put(None)
    return session_id, bytes(received), code


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` in frames cut at the given offsets (taken modulo its length)."""
    points = sorted({c % len(data) for c in cuts} | {0, len(data)}) if data else [0, 0]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def cancel_inside() -> st.SearchStrategy[Stream]:
    """A CancelRequest belongs on a connection of its own, never inside a session."""
    return st.builds(
        lambda key: Stream(
            kind="cancel inside",
            good=b"",
            bad=_untagged(CANCEL_CODE, struct.pack("!i", 1) + key),
            tail=b"",
            startup=False,
        ),
        st.binary(min_size=4, max_size=4),
    )


def test_malformed_streams_over_grpc_end_only_their_own_session(
    stack: Stack, listener: Connect, client_stub: client_pb2_grpc.ClientServiceStub
) -> None:
    baseline = app_backends(stack)
    streams: dict[str, Stream] = {}
    token = stack.controlplane.token
    with healthy_session(listener) as healthy:
        after = last_seq(stack)

        @settings(FUZZ, max_examples=50)
        @given(
            stream=st.one_of(after_startup(), st.one_of(before_startup(), cancel_inside())),
            cuts=st.lists(st.integers(0, 2**20), max_size=4),
        )
        @example(stream=UNKNOWN_TYPE, cuts=[])
        @example(stream=HUGE, cuts=[1, 2, 3])  # length words in pieces
        @example(stream=OVERSIZED_QUERY, cuts=[300_000])
        @example(stream=NO_STARTUP, cuts=[2])
        def one(stream: Stream, cuts: list[int]) -> None:
            event(stream.kind)
            label = f"fuzz-grpc-{uuid.uuid4().hex[:16]}"
            session_id, received, code = grpc_exchange(client_stub, token, label, stream, cuts)
            assert code == grpc.StatusCode.OK, (code, received)
            fatal = fatal_errors(received)
            assert [f.get("C") for f in fatal] == ["08P01"], received
            assert backend_messages(received)[-1][0] == "E"
            assert_alive(stack, listener)
            assert not healthy.errors
            streams[session_id] = stream

        one()
    events = wait_for_ends(stack, after, list(streams), by="session_id")
    check_trail(stack, events, streams, session_ids(events, list(streams), "session_id"), healthy)
    wait_for_backends(stack, baseline)
    assert healthy.queries > 20


# ---- found by these tests ----------------------------------------------------------------------


def open_ready(port: int, app: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    sock.sendall(startup(app))
    received = b""
    while not readies(received):
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received, False
    return received, True


def test_a_zero_type_byte_after_the_startup_is_a_protocol_error(
    stack: Stack, listener: Connect
) -> None:
    after = last_seq(stack)
    apps = []
    for name, body in (
        ("ssl", struct.pack("!ii", 8, SSL_CODE)),
        ("startup", struct.pack("!ii", 9, PROTOCOL_3) + b"\0"),
    ):
        app = f"zero-{name}-{uuid.uuid4().hex[:12]}"
        apps.append(app)
        with open_ready(listener.port, app) as sock:
            sock.sendall(b"\0" + body + message(b"Q", cstring("select 1 as after_zero")))
            received, closed = read_until_closed(sock)
        assert closed, f"{name}: the session went on: {received!r}"
        assert [f.get("C") for f in fatal_errors(received)] == ["08P01"], received
        assert b"gatehouse" in received, "the target, not the gateway, found the error"
    events = wait_for_ends(stack, after, apps, by="client")
    ids = session_ids(events, apps, "client")
    reasons = [e["reason"] for e in events if e["type"] == "session.end"]
    assert len(ids) == 2
    assert all("protocol error" in r for r in reasons), reasons


def test_a_message_cut_off_by_the_client_leaving_is_recorded_as_a_protocol_error(
    stack: Stack, listener: Connect
) -> None:
    after = last_seq(stack)
    app = f"cut-{uuid.uuid4().hex[:12]}"
    with open_ready(listener.port, app) as sock:
        sock.sendall(message(b"Q", b"select 1 as never_", 100))  # 100 announced, 18 sent
        time.sleep(0.2)
    events = wait_for_ends(stack, after, [app], by="client")
    (session_id,) = session_ids(events, [app], "client").values()
    (end,) = [e for e in events if e["type"] == "session.end" and e["session_id"] == session_id]
    assert "protocol error" in end["reason"], end["reason"]
    assert not [e for e in events if e["type"] == "db.query" and e["session_id"] == session_id]


def test_a_malformed_message_while_a_result_is_streaming_ends_the_session(
    stack: Stack, listener: Connect
) -> None:
    after = last_seq(stack)
    apps = []
    for _ in range(2):
        app = f"busy-{uuid.uuid4().hex[:12]}"
        apps.append(app)
        with open_ready(listener.port, app) as sock:
            big = "select repeat('x', 1000) from generate_series(1, 1000000)"
            sock.sendall(message(b"Q", cstring(big)))
            time.sleep(1)  # not reading: the gateway is busy writing the result to us
            sock.sendall(message(b"Q", cstring("") + b"junk"))
            received, closed = read_until_closed(sock)
        assert closed, "the session was never ended"
        assert all(f.get("C") == "08P01" for f in fatal_errors(received))
    events = wait_for_ends(stack, after, apps, by="client")
    ids = session_ids(events, apps, "client")
    ends = [e for e in events if e["type"] == "session.end" and e["session_id"] in ids.values()]
    assert len(ends) == 2
    assert all("protocol error" in e["reason"] for e in ends), [e["reason"] for e in ends]


def test_the_gateways_own_answer_after_a_flush_reaches_the_client(
    stack: Stack, listener: Connect
) -> None:
    with open_ready(listener.port, f"flush-{uuid.uuid4().hex[:12]}") as sock:
        sock.sendall(FLUSH + FUNCTION_CALL)
        received = b""
        with contextlib.suppress(TimeoutError):
            while readies(received) < 1 and (chunk := sock.recv(65536)):
                received += chunk
    errors = [error_fields(body) for tag, body in backend_messages(received) if tag == "E"]
    assert [e.get("C") for e in errors] == ["0A000"], received
    assert readies(received) == 1

"""Reconcile what PostgreSQL ran (its own `log_statement=all` log) with the audit trail.

The target's log is the ground truth of an audit gateway: whatever the trail says, the server
writes every statement it runs before running it. Tests drive a session with a raw-protocol
client (`PgWire`: bytes exactly as an attacker would send them, pipelined, in any client
encoding), then `reconcile()` the server's log lines written meanwhile with the `db.query`
events committed meanwhile. Sessions of one window run one after the other, so the window
attributes every log line to the session under test.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from controlplane.policy.statement_secrets import redact_statement

PROTOCOL_3 = 196608

# %m [%p] SEVERITY:  message, continuation lines start with a tab (devenv.postgres pins it).
_ENTRY_RE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \[(?P<pid>\d+)\] "
    r"(?P<severity>[A-Z][A-Z0-9]*):  (?P<msg>.*)$"
)
# Portal names may hold anything but ':' in what we generate; "execute fetch from" is a later
# Execute of a portal that already ran: the same statement continuing, not a new one.
_RUN_RE = re.compile(r"(?:statement|execute (?P<name>[^:\n]*)): (?P<text>.*)", re.DOTALL)
#: What the tests' own functions write to the server's log (RAISE LOG) for every cursor they
#: open, so that the log says when a cursor's name came to stand for another query.
OPENED_BY_CODE = "cursor opened by code: "
#: What the tests' own functions write to the server's log for every statement they prepare.
PREPARED_BY_CODE = "statement prepared by code: "
_DECLARE_RE = re.compile(r'(?i)\bdeclare\s+("?)(?P<name>\w+)\1\s')
_DEALLOCATE_RE = re.compile(r'(?i)\bdeallocate\s+(?:prepare\s+)?("?)(?P<name>\w+)\1')
_DEALLOCATE_ALL_RE = re.compile(r"(?i)\b(?:deallocate\s+(?:prepare\s+)?all|discard\s+all)\b")
_PREPARE_RE = re.compile(r'(?i)\bprepare\s+("?)(?P<name>\w+)\1[\s(]')


# ---- the frontend protocol, built by hand --------------------------------------------------


def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def cstr(text: str | bytes, encoding: str = "utf-8") -> bytes:
    raw = text if isinstance(text, bytes) else text.encode(encoding)
    return raw + b"\0"


def startup(params: dict[str, str]) -> bytes:
    body = struct.pack("!i", PROTOCOL_3)
    body += b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def query(sql: str | bytes, encoding: str = "utf-8") -> bytes:
    return message(b"Q", cstr(sql, encoding))


def parse(name: str, sql: str | bytes, encoding: str = "utf-8") -> bytes:
    return message(b"P", cstr(name) + cstr(sql, encoding) + struct.pack("!h", 0))


def bind(statement: str, portal: str = "", params: Iterable[str | None] = ()) -> bytes:
    values = list(params)
    body = cstr(portal) + cstr(statement) + struct.pack("!h", 0)
    body += struct.pack("!h", len(values))
    for value in values:
        if value is None:
            body += struct.pack("!i", -1)
        else:
            raw = value.encode()
            body += struct.pack("!i", len(raw)) + raw
    return message(b"B", body + struct.pack("!h", 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", cstr(portal) + struct.pack("!i", max_rows))


def describe(kind: str, name: str) -> bytes:
    return message(b"D", kind.encode() + cstr(name))


def close(kind: str, name: str) -> bytes:
    return message(b"C", kind.encode() + cstr(name))


def sync() -> bytes:
    return message(b"S", b"")


def flush() -> bytes:
    return message(b"H", b"")


def terminate() -> bytes:
    return message(b"X", b"")


def extended(sql: str, name: str = "", params: Iterable[str | None] = ()) -> bytes:
    """Parse, Bind, Execute of one statement (no Sync)."""
    return parse(name, sql) + bind(name, "", params) + execute("")


@dataclass
class Backend:
    """One backend message."""

    tag: str
    body: bytes

    def fields(self) -> dict[str, str]:
        out = {}
        for item in self.body.split(b"\0"):
            if item:
                out[chr(item[0])] = item[1:].decode("utf-8", errors="replace")
        return out


@dataclass
class Answer:
    """The backend messages answering what was sent, up to the expected ReadyForQuery."""

    messages: list[Backend]
    closed: bool = False  # the gateway ended the connection

    @property
    def errors(self) -> list[dict[str, str]]:
        return [m.fields() for m in self.messages if m.tag == "E"]

    @property
    def sqlstates(self) -> list[str]:
        return [e.get("C", "") for e in self.errors]

    @property
    def tags(self) -> str:
        return "".join(m.tag for m in self.messages)

    def rows(self) -> list[list[str | None]]:
        out = []
        for m in self.messages:
            if m.tag != "D":
                continue
            (count,) = struct.unpack_from("!h", m.body, 0)
            pos, row = 2, []
            for _ in range(count):
                (length,) = struct.unpack_from("!i", m.body, pos)
                pos += 4
                if length < 0:
                    row.append(None)
                else:
                    row.append(m.body[pos : pos + length].decode("utf-8", errors="replace"))
                    pos += length
            out.append(row)
        return out


class PgWire:
    """A PostgreSQL client made of bytes, talking to `gatehouse connect`'s listener."""

    def __init__(self, port: int, timeout: float = 30, **params: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buf = b""
        self.settings: dict[str, str] = {}
        self.send(startup({"user": "adversary", "database": "pg", **params}))
        self.startup = self.wait(1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _next(self) -> Backend | None:
        while True:
            if len(self._buf) >= 5:
                (length,) = struct.unpack_from("!i", self._buf, 1)
                if len(self._buf) >= 1 + length:
                    tag, body = chr(self._buf[0]), self._buf[5 : 1 + length]
                    self._buf = self._buf[1 + length :]
                    return Backend(tag, body)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""  # it closed with our bytes unread; what it said before is here
            if not chunk:
                return None
            self._buf += chunk

    def wait(self, readies: int) -> Answer:
        """Read until `readies` ReadyForQuery messages arrived (or the connection ended)."""
        got: list[Backend] = []
        seen = 0
        while seen < readies:
            msg = self._next()
            if msg is None:
                return Answer(got, closed=True)
            got.append(msg)
            if msg.tag == "S":
                name, value = msg.body.split(b"\0")[:2]
                self.settings[name.decode()] = value.decode()
            seen += msg.tag == "Z"
        return Answer(got)

    def wait_for(self, tag: str) -> Backend:
        """Read until a message with ``tag`` arrived (CopyInResponse, say)."""
        while True:
            msg = self._next()
            if msg is None:
                raise ConnectionError(f"the connection ended before a {tag!r} message")
            if msg.tag == tag:
                return msg

    def run(self, data: bytes, readies: int = 1) -> Answer:
        self.send(data)
        return self.wait(readies)

    def until_closed(self) -> Answer:
        """Everything the other side says until it closes."""
        return self.wait(2**31)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(terminate())
        self.sock.close()

    def __enter__(self) -> PgWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the server's log ----------------------------------------------------------------------


@dataclass
class Entry:
    pid: int
    severity: str
    message: str


def entries(text: str) -> Iterator[Entry]:
    current: Entry | None = None
    lines: list[str] = []
    for line in text.split("\n"):
        if current is not None and line.startswith("\t"):
            lines.append(line[1:])
            continue
        if current is not None:
            current.message = "\n".join(lines)
            yield current
            current = None
        if match := _ENTRY_RE.match(line):
            current = Entry(int(match["pid"]), match["severity"], "")
            lines = [match["msg"]]
    if current is not None:
        current.message = "\n".join(lines)
        yield current


@dataclass
class Ran:
    """What the server's log says it ran, in order."""

    statements: list[str] = field(default_factory=list)  # LOG statement: / execute <name>:
    continued: list[str] = field(default_factory=list)  # execute fetch from: a portal resumed
    failed: list[str] = field(default_factory=list)  # STATEMENT: after an ERROR
    # The portal of each line of `statements` / `continued` ("" unnamed, None for a Query).
    portals: list[str | None] = field(default_factory=list)
    continued_portals: list[str] = field(default_factory=list)


def ran(text: str) -> Ran:
    out = Ran()
    for entry in entries(text):
        if entry.severity == "LOG" and (match := _RUN_RE.fullmatch(entry.message)):
            name = match["name"]
            if name is not None and name.startswith("fetch from "):
                out.continued.append(match["text"])
                out.continued_portals.append(_portal(name) or "")
            else:
                out.statements.append(match["text"])
                out.portals.append(_portal(name))
        elif entry.severity == "STATEMENT":
            out.failed.append(entry.message)
    return out


def _portal(name: str | None) -> str | None:
    """The portal of a log line's `execute [fetch from] <statement>[/<portal>]` (None: a simple
    Query's `statement:`); PostgreSQL names the unnamed statement `<unnamed>`."""
    if name is None:
        return None
    return name.split("/", 1)[1] if "/" in name else ""


class LogWindow:
    """The part of the server's log written after it was opened."""

    def __init__(self, log_file: Path) -> None:
        self.path = Path(log_file)
        self.offset = self.path.stat().st_size

    def text(self) -> str:
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            return fh.read().decode("utf-8", errors="replace")

    def ran(self) -> Ran:
        return ran(self.text())


# ---- the trail -----------------------------------------------------------------------------


@dataclass
class Trail:
    """The db.query events of a window and their results."""

    queries: list[dict[str, Any]]
    results: dict[int, dict[str, Any]]

    @classmethod
    def of(cls, events: list[dict[str, Any]]) -> Trail:
        """The statements of `events`. Settings a StartupMessage made (`protocol: "startup"`)
        are no statement the server logs; tests/e2e/test_pg_startup_settings.py checks them
        by their effect."""
        return cls(
            [
                e
                for e in events
                if e["type"] == "db.query" and e["request"].get("protocol") != "startup"
            ],
            {e["ref"]: e["result"] for e in events if e["type"] == "db.result"},
        )

    def allowed(self) -> list[dict[str, Any]]:
        return [q for q in self.queries if q["decision"]["result"] == "allow"]

    def denied(self) -> list[str]:
        return [
            q["request"]["statement"] for q in self.queries if q["decision"]["result"] != "allow"
        ]

    def result(self, query: dict[str, Any]) -> dict[str, Any] | None:
        return self.results.get(query["seq"])


def reconcile(log: Ran, trail: Trail) -> list[str]:
    """What is wrong between the log and the trail; empty when they agree exactly.

    * every statement the server logged as run has an allowed `db.query` with exactly its text
      (as many events as log lines);
    * every allowed statement whose result says it succeeded was logged as run;
    * no statement recorded as denied was run (unless an allowed event of the same text
      accounts for it);
    * no allowed `db.query` records an empty statement (the trail must say what ran, not "";
      a refusal of an unknown name may, it names the name instead), but for an Execute of a
      portal whose text is unknown: it names the portal, in `portal` and `cursors_unknown`,
      and accounts for a log line `execute <that portal>: <any text>`.

    Password literals compare masked on both sides: the trail must not hold them. A statement
    prepared by SQL `PREPARE` or a cursor made by `DECLARE` and then executed through the
    extended protocol is logged with the text that created it (the whole query string); the
    event may name that text, or the query inside it (compared as pglast deparses both).
    """
    problems = []
    allowed = trail.allowed()

    def succeeded(i: int) -> bool:
        result = trail.result(allowed[i])
        return result is not None and result.get("error") is None

    # A log line is matched to a succeeded event first: those must be in the log, while a
    # failed one may be (an error while running) or not (an error before it ran).
    unmatched = sorted(range(len(allowed)), key=lambda i: (not succeeded(i), i))
    texts = [q["request"]["statement"] for q in allowed]
    # A log line is matched to an event of its kind first (`statement:` to a simple Query,
    # `execute` to the extended protocol): a statement SQL PREPARE made and executed through the
    # protocol is logged with the very text of the PREPARE Query, and must not take its event.
    lines = [(redact_statement(s), p) for s, p in zip(log.statements, log.portals, strict=True)]
    simple = [q["request"].get("protocol") == "simple" for q in allowed]
    leftover: list[tuple[str, str | None]] = []
    for logged, portal in lines:
        kind = portal is None
        at = next((i for i in unmatched if texts[i] == logged and simple[i] == kind), None)
        if at is None:
            leftover.append((logged, portal))
        else:
            unmatched.remove(at)

    def unknown_portal(portal: str | None) -> int | None:
        """An unmatched event of an Execute of ``portal`` whose text the gateway cannot know."""
        return next(
            (i for i in unmatched if portal is not None and _unknown_portal(allowed[i]) == portal),
            None,
        )

    for logged, portal in leftover:
        inner = _inner_queries(logged)
        at = next((i for i in unmatched if inner and _deparsed(texts[i]) in inner), None)
        if at is None:
            at = unknown_portal(portal)
        if at is None:
            at = next((i for i in unmatched if texts[i] == logged), None)  # of the other kind
        if at is None:
            problems.append(f"run by PostgreSQL without an allowed db.query: {logged!r}")
        else:
            unmatched.remove(at)
    # A portal executed again (after a row limit, or once more when done) is logged as
    # "execute fetch from": it may account for an event of its text, and needs none.
    continued = zip(log.continued, log.continued_portals, strict=True)
    for logged, portal in ((redact_statement(s), p) for s, p in continued):
        at = unknown_portal(portal)  # (the text may be any other portal's)
        if at is None:
            at = next((i for i in unmatched if texts[i] == logged), None)
        if at is not None:
            unmatched.remove(at)
    for i in unmatched:
        if succeeded(i):
            problems.append(f"recorded as run and succeeded, not in the log: {texts[i]!r}")
    ran = Counter(redact_statement(s) for s in log.statements)
    allowed_count = Counter(texts)
    for text in set(trail.denied()):
        if ran[text] > allowed_count[text]:
            problems.append(f"denied in the trail, run by PostgreSQL: {text!r}")
    for q in allowed:
        if not q["request"]["statement"].strip() and _unknown_portal(q) is None:
            problems.append(f"an allowed db.query records an empty statement: seq {q['seq']}")
    return problems


def _unknown_portal(query: dict[str, Any]) -> str | None:
    """The portal an event's Execute ran when the event claims no text for it."""
    request = query["request"]
    portal = request.get("portal")
    if request["statement"] == "" and portal in request.get("cursors_unknown", {}):
        return str(portal)
    return None


def cursor_claims(text: str, trail: Trail) -> list[str]:
    """Allowed events that claim what a cursor runs after code opened another cursor by its name,
    or that call a cursor's text unknown where the log shows none could have replaced it.

    The functions the tests call announce each cursor they open (``OPENED_BY_CODE`` in the
    server's log, in the order things ran); a DECLARE that ran gives the name its own text again.
    The same for prepared statements (``PREPARED_BY_CODE``, PREPARE): an event must not claim
    their text in ``prepared`` (a protocol Parse is not logged: a test must not Parse a name
    code prepared and then EXECUTE it in SQL).
    An event must then say the cursor's text is unknown (``cursors_unknown``), never claim one.
    The other way round, "unknown" is a claim too: only after the log shows a statement that
    may run code (``Proof``) since the cursor was declared (or its portal first ran). Names
    belong to one session: each server process is read on its own.
    """
    problems = []
    opened: defaultdict[int, set[str]] = defaultdict(set)
    prepared: defaultdict[int, set[str]] = defaultdict(set)  # by code, since
    proofs: defaultdict[int, Proof] = defaultdict(Proof)
    # Each statement the server logged is the next event of its text that may have run (one
    # its pipeline skipped was never logged), whether that event claims a cursor text or not.
    ran = [q for q in trail.allowed() if (trail.result(q) or {}).get("error") != "skipped"]
    logged = list(entries(text))
    for index, entry in enumerate(logged):
        proof = proofs[entry.pid]
        if entry.severity == "STATEMENT":
            proof.ran(entry.message, None, failed=True)
            continue
        if entry.severity != "LOG":
            continue
        if entry.message.startswith(PREPARED_BY_CODE):
            prepared[entry.pid].add(entry.message.removeprefix(PREPARED_BY_CODE))
            continue
        if entry.message.startswith(OPENED_BY_CODE):
            opened[entry.pid].add(entry.message.removeprefix(OPENED_BY_CODE))
            proof.opened(entry.message.removeprefix(OPENED_BY_CODE))
            continue
        match = _RUN_RE.fullmatch(entry.message)
        if match is None:
            continue
        statement = redact_statement(match["text"])
        resumed = (match["name"] or "").startswith("fetch from ")
        portal = _portal(match["name"])
        event = next((q for q in ran if q["request"]["statement"] == statement), None)
        if event is None and portal is not None:
            event = next((q for q in ran if _unknown_portal(q) == portal), None)
        if event is not None:
            ran.remove(event)
            for name in sorted(opened[entry.pid] & set(event["request"].get("cursors", ()))):
                problems.append(
                    f"claims the text of cursor {name!r}, which a function opened again: "
                    f"{statement!r} (seq {event['seq']})"
                )
            for name in sorted(prepared[entry.pid] & set(event["request"].get("prepared", ()))):
                problems.append(
                    f"claims the text of prepared statement {name!r}, which a function prepared "
                    f"again: {statement!r} (seq {event['seq']})"
                )
            for name in sorted(proof.proven & set(event["request"].get("cursors_unknown", ()))):
                problems.append(
                    f"calls the text of cursor {name!r} unknown, but nothing that could replace "
                    f"it ran since it was made: {statement!r} (seq {event['seq']})"
                )
        after = (e.severity for e in logged[index + 1 :] if e.pid == entry.pid)
        failed = next(after, "") == "ERROR"
        proof.ran(match["text"], portal, failed=failed, resumed=resumed)
        if not failed:
            opened[entry.pid] -= {m["name"] for m in _DECLARE_RE.finditer(statement)}
            prepared[entry.pid] -= {m["name"] for m in _PREPARE_RE.finditer(statement)}
            if _DEALLOCATE_ALL_RE.search(statement):
                prepared[entry.pid].clear()
            prepared[entry.pid] -= {m["name"] for m in _DEALLOCATE_RE.finditer(statement)}
            named = (match["name"] or "").split("/", 1)[0]
            if named and not resumed and not statement.lstrip().lower().startswith("prepare"):
                prepared[entry.pid].discard(named)  # runs a text the client Parsed
    return problems


_ENDS: Final = re.compile(r"(?i)\s*(?:commit|end|rollback|abort)\b(?!\s+to\b)")
_BEGINS: Final = re.compile(r"(?i)\s*(?:begin|start)\b")


@dataclass
class Proof:
    """Which cursors and portals of one session the log shows made and not since exposed to
    code that could have re-opened them, by the rule the gateway follows (decision 0010, item
    7), read from the log alone: a statement that may run code (`pg_sql`) exposes every cursor
    but the one it runs, and, outside a transaction block or at the end of one that ran code,
    that one too. A statement logged and then failed may have run code before it failed. A
    transaction's end drops its cursors not declared WITH HOLD and its portals, and, if it ran
    code, leaves none proven (its COMMIT runs each holdable cursor's query).

    The log does not show a Bind, only the text an Execute ran. An Execute of a portal that
    was exposed (or that code opened) may run another text than the one it was bound with, so
    the gateway cannot know what it runs: it counts as code, and its portal stays unproven (a
    Bind the log cannot show may have made it afresh; then "unknown" is merely conservative).
    """

    proven: set[str] = field(default_factory=set)
    holdable: set[str] = field(default_factory=set)  # cursors declared WITH HOLD
    seen: set[str] = field(default_factory=set)  # names made or run in this session
    # Statements SQL PREPARE made since code last ran: the gateway knows their text. (One a
    # client Parsed is Parsed again by the gateway before a Bind that follows code.)
    prepared: set[str] = field(default_factory=set)
    in_block: bool = False
    code_in_block: bool = False

    def ran(self, text: str, portal: str | None, *, failed: bool, resumed: bool = False) -> None:
        from controlplane.relay.pg import sql as pg_sql

        found = pg_sql.statements(text)
        parts = [pg_sql.SqlStatement(text)] if isinstance(found, pg_sql.Unreadable) else found
        unknown = bool(portal) and portal not in self.proven and (resumed or portal in self.seen)
        inner = _sql_prepared(parts) if portal is not None else None
        if inner is not None:
            # A statement SQL PREPARE made, executed through the protocol: the server runs the
            # query inside, and its text is unknown once code ran since the PREPARE.
            name, runs_code = inner
            unknown = unknown or (name not in self.prepared and not resumed)
            parts = [pg_sql.SqlStatement(text, runs_code=runs_code)]
        code = unknown
        for part in parts:
            keeps = {portal} if portal else set()
            if part.fetches is not None:
                keeps.add(part.fetches)
            if part.runs_code or unknown:
                code = self.code_in_block = True
                self.proven &= keeps if self.in_block else set()
                self.prepared.clear()
            if _BEGINS.match(part.text) and not failed:
                self.in_block, self.code_in_block = True, False
            elif _ENDS.match(part.text):
                self._ended()
            effect = part.effect
            if failed or effect is None:
                continue
            if effect.op == "prepare" and effect.name is not None:
                self.prepared.add(effect.name)
            elif effect.op == "declare" and effect.name is not None:
                self.proven.add(effect.name)
                self.seen.add(effect.name)
                if effect.holdable:
                    self.holdable.add(effect.name)
                else:
                    self.holdable.discard(effect.name)
            elif effect.op in ("close", "discard"):
                self.proven -= {effect.name} if effect.name else set(self.proven)
        if portal:
            self.seen.add(portal)
            if not resumed and not failed and not unknown:
                self.proven.add(portal)  # its first Execute: bound just before, and run now
        if not self.in_block:  # its own transaction (a pipeline's lasts to its Sync) ended,
            # which, if it ran code, may run more (a holdable cursor's query, to keep its rows)
            kept = {portal} if portal else set()
            self.proven &= kept if code else self.holdable | kept
            if code:
                self.prepared.clear()

    def opened(self, name: str) -> None:
        """Code announced it opened a cursor by that name."""
        self.proven.discard(name)
        self.seen.add(name)

    def _ended(self) -> None:
        if self.code_in_block or not self.in_block:
            self.proven.clear()
            self.prepared.clear()
        self.proven &= self.holdable
        self.in_block = self.code_in_block = False


def _sql_prepared(parts: list[Any]) -> tuple[str, bool] | None:
    """The name a text that is one SQL PREPARE makes, and whether its query may run code."""
    if len(parts) != 1 or parts[0].effect is None or parts[0].effect.op != "prepare":
        return None
    return str(parts[0].effect.name), parts[0].effect.runs_code


def _deparsed(sql: str) -> str | None:
    from pglast import parse_sql
    from pglast.stream import RawStream

    try:
        statements = parse_sql(sql)
        return ";".join(RawStream()(r.stmt) for r in statements)
    except Exception:
        return None


def _inner_queries(sql: str) -> set[str]:
    """The queries that PREPARE and DECLARE statements in `sql` hold, deparsed."""
    from pglast import ast, parse_sql
    from pglast.stream import RawStream

    try:
        statements = parse_sql(sql)
    except Exception:
        return set()
    return {
        RawStream()(r.stmt.query)
        for r in statements
        if isinstance(r.stmt, ast.PrepareStmt | ast.DeclareCursorStmt)
    }


def wait_until(predicate: Any, timeout: float = 15, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def http_events(http_port: int, token: str, after: int) -> list[dict[str, Any]]:
    """Events after `after` from the export API: much cheaper than a CLI process per read."""
    import json
    import urllib.request

    events: list[dict[str, Any]] = []
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/v1/audit/events?after={after}&limit=1000"
        )
        request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode("utf-8")
        page = [json.loads(line) for line in body.split("\n") if line]
        if not page:
            return events
        events += page
        after = page[-1]["seq"]

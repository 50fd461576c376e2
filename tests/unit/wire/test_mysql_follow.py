"""The response follower on whole exchanges: random commands answered by random well-formed
responses (OK, ERR, result sets text and binary, multi-results, prepare answers), with and
without DEPRECATE_EOF, cut at random points: every result ends where it should."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from wire.mysql import messages as msg
from wire.mysql.constants import Capability, Command, FieldType, Status
from wire.mysql.follow import Done, Follower, Row
from wire.mysql.packets import PacketFramer, encode

COLUMN = msg.Column("c", FieldType.VAR_STRING)


@dataclass
class Exchange:
    command: bytes
    response: list[bytes]  # payloads
    results: list[tuple[str, int]]  # (kind, rows or affected) of each result
    rows: int


def _result_set(
    rows: list[bytes | None], deprecate_eof: bool, status: int, binary: bool
) -> list[bytes]:
    out = [msg.lenenc_int(1), msg.column(COLUMN)]
    if not deprecate_eof:
        out.append(msg.eof())
    for value in rows:
        out.append(
            msg.binary_row([value and msg.lenenc_bytes(value)]) if binary else msg.text_row([value])
        )
    end = msg.ok(status=status, header=0xFE) if deprecate_eof else msg.eof(status=status)
    return [*out, end]


@st.composite
def exchanges(draw: st.DrawFn, deprecate_eof: bool) -> Exchange:
    kind = draw(st.sampled_from(["query", "execute", "prepare", "ping"]))
    if kind == "ping":
        if draw(st.booleans()):
            return Exchange(msg.command(Command.PING), [msg.ok()], [("ok", 0)], 0)
        return Exchange(msg.command(Command.PING), [msg.err(1, "HY000", "x")], [("error", -1)], 0)
    if kind == "prepare":
        params, columns = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        response = [msg.prepare_ok(5, columns, params)]
        for count in (params, columns):
            response += [msg.column(COLUMN)] * count
            if count and not deprecate_eof:
                response.append(msg.eof())
        return Exchange(
            msg.command(Command.STMT_PREPARE, b"SELECT ?"), response, [("prepared", -1)], 0
        )
    binary = kind == "execute"
    command = (
        msg.command(Command.STMT_EXECUTE, b"\x05\x00\x00\x00\x00\x01\x00\x00\x00")
        if binary
        else msg.command(Command.QUERY, b"SELECT 1")
    )
    results = draw(st.lists(st.sampled_from(["ok", "rows", "error"]), min_size=1, max_size=4))
    if "error" in results:
        results = results[: results.index("error") + 1]  # an error ends the response
    response: list[bytes] = []
    seen: list[tuple[str, int]] = []
    total = 0
    for index, result in enumerate(results):
        more = Status.MORE_RESULTS_EXISTS if index < len(results) - 1 else 0
        if result == "ok":
            affected = draw(st.integers(0, 70000))
            response.append(msg.ok(affected_rows=affected, status=2 | more))
            seen.append(("ok", affected))
        elif result == "error":
            response.append(msg.err(1146, "42S02", "no table"))
            seen.append(("error", -1))
        else:
            rows = draw(st.lists(st.one_of(st.none(), st.binary(max_size=300)), max_size=5))
            response += _result_set(rows, deprecate_eof, 2 | more, binary)
            seen.append(("rows", len(rows)))
            total += len(rows)
    return Exchange(command, response, seen, total)


@settings(max_examples=300, deadline=None)
@given(
    deprecate_eof=st.booleans(),
    data=st.data(),
    cuts=st.lists(st.integers(0, 100_000), max_size=10),
)
def test_every_result_ends_where_the_server_ended_it(
    deprecate_eof: bool, data: st.DataObject, cuts: list[int]
) -> None:
    session = data.draw(st.lists(exchanges(deprecate_eof), min_size=1, max_size=6))
    follower = Follower(int(Capability.DEPRECATE_EOF) if deprecate_eof else 0)
    stream = bytearray()
    for exchange in session:
        follower.command(exchange.command)
        for seq, payload in enumerate(exchange.response, start=1):
            stream += encode(payload, seq)
    framer = PacketFramer()
    seen: list[tuple[str, int]] = []
    lasts = rows = 0
    points = sorted({c % (len(stream) + 1) for c in cuts})
    previous = 0
    for point in [*points, len(stream)]:
        for packet in framer.feed(bytes(stream[previous:point])):
            outcome = follower.server(packet)
            if isinstance(outcome, Row):
                rows += 1
            elif isinstance(outcome, Done):
                seen.append((outcome.kind, outcome.rows if outcome.kind != "prepared" else -1))
                lasts += outcome.last
        previous = point
    assert seen == [result for exchange in session for result in exchange.results]
    assert lasts == len(session)
    assert rows == sum(exchange.rows for exchange in session)
    assert follower.idle


def test_rows_fetched_from_a_cursor_have_the_columns_of_the_execute_that_opened_it() -> None:
    follower = Follower(0)
    execute = msg.command(Command.STMT_EXECUTE, b"\x05\x00\x00\x00\x01\x01\x00\x00\x00")
    follower.command(execute)
    opened = [msg.lenenc_int(1), msg.column(COLUMN), msg.eof(status=Status.CURSOR_EXISTS)]
    framer = PacketFramer()
    seen = [
        follower.server(p)
        for p in framer.feed(b"".join(encode(x, i) for i, x in enumerate(opened, 1)))
    ]
    assert isinstance(seen[-1], Done) and seen[-1].last
    follower.command(msg.command(Command.STMT_FETCH, b"\x05\x00\x00\x00\x0a\x00\x00\x00"))
    rows = [msg.binary_row([msg.lenenc_bytes(b"a@b.c")]), msg.eof(status=Status.LAST_ROW_SENT)]
    seen = [
        follower.server(p)
        for p in framer.feed(b"".join(encode(x, i) for i, x in enumerate(rows, 1)))
    ]
    assert isinstance(seen[0], Row) and seen[0].columns == [COLUMN] and seen[0].binary
    assert isinstance(seen[1], Done) and seen[1].last

"""Through either way in (`gatehouse connect`, `--pg-listen`), a PostgreSQL client sees exactly
what a direct connection to the same database shows. Each test runs one workload twice, through
the gateway and directly (as the agent's own database user), and compares what came back; the
last one reconciles the audit trail with the statement log of the server itself."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import random
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest
import sqlalchemy as sa
from psycopg.types.json import Json, Jsonb
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as sa_pg

from devenv.postgres import PostgresServer, parse_statement_log
from tests.e2e.conftest import PG_PASSWORD, WAYS_IN, Stack, WayIn, way_in

T = TypeVar("T")


@pytest.fixture(scope="module", params=WAYS_IN)
def listener(request: pytest.FixtureRequest, stack: Stack) -> Iterator[WayIn]:
    with way_in(request.param, stack) as way:
        yield way


@pytest.fixture(scope="module")
def gateway(listener: WayIn) -> str:
    """The client's side of the gateway: any user name, the connection's name as database."""
    return listener.url()


@pytest.fixture(scope="module")
def direct(pg: PostgresServer) -> str:
    """The same database as the same user, without the gateway."""
    return pg.dsn(user="app", password=PG_PASSWORD, database="app")


def marker() -> str:
    return f"f{uuid.uuid4().hex[:12]}"


def both(gateway: str, direct: str, run: Callable[[str, str], T]) -> tuple[T, T]:
    """Run a workload through the gateway and directly, each on tables of its own."""
    tag = marker()
    return run(gateway, f"{tag}_gw"), run(direct, f"{tag}_direct")


def scrub(value: Any, name: str) -> Any:
    """Results and messages name the run's own table: make the two runs comparable."""
    if isinstance(value, str):
        return value.replace(name, "T")
    if isinstance(value, list | tuple):
        return type(value)(scrub(v, name) for v in value)
    if isinstance(value, dict):
        return {k: scrub(v, name) for k, v in value.items()}
    return value


def db_queries(events: list[dict[str, Any]], needle: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "db.query" and needle in e["request"]["statement"]]


# ---- prepared statements, binary format, types ---------------------------------------------

TYPED_COLUMNS = (
    ("int4", "i4"),
    ("int8", "i8"),
    ("numeric", "num"),
    ("float8", "f8"),
    ("bool", "b"),
    ("text", "txt"),
    ("bytea", "raw"),
    ("timestamptz", "ts"),
    ("uuid", "id"),
    ("json", "js"),
    ("jsonb", "jsb"),
    ("int4[]", "ints"),
    ("text[]", "texts"),
    ("text", "nothing"),
)


def typed_sql(tag: str, placeholder: str) -> str:
    """`placeholder` is formatted with the parameter's number: `%s`, `%b`, `${n}`."""
    columns = ", ".join(
        f"{placeholder.format(n=n)}::{type_} as {name}"
        for n, (type_, name) in enumerate(TYPED_COLUMNS, 1)
    )
    return f"select {columns}, '{tag}' as tag"


def typed_params(i: int) -> tuple[Any, ...]:
    return (
        i,
        2**40 + i,
        Decimal("12345.6789") * i,
        1.5 / (i + 1),
        i % 2 == 0,
        f"héllo {i} ✓",
        bytes(range(i * 10, i * 10 + 10)),
        dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i, microseconds=i),
        uuid.UUID(int=i + 1),
        Json({"k": i, "l": [1, None]}),
        Jsonb({"k": i, "nested": {"é": [True, False]}}),
        [i, None, 3],
        ["a", None, "b,c", '"q"'],
        None,
    )


def typed_row(i: int, tag: str) -> tuple[Any, ...]:
    """What psycopg must read back for typed_params(i)."""
    params = typed_params(i)
    return (*params[:9], params[9].obj, params[10].obj, *params[11:], tag)


# Values the server makes itself: how each type travels back, edge cases included.
SERVER_SQL = """\
select g,
       g::int8 * 1000000007 as big,
       (g / 7.0)::numeric(30, 20) as frac,
       case g when 1 then 'NaN'::numeric else 10::numeric ^ (g * 9) end as huge,
       case g when 1 then 'NaN'::float8 when 2 then '-Infinity'::float8 else g / 3.0 end as f8,
       '2024-02-29 23:59:59.999999+00'::timestamptz + g * interval '1 day 3 us' as ts,
       (g % 2 = 0) as even,
       decode(repeat(lpad(to_hex(g), 2, '0'), g), 'hex') as raw,
       md5(g::text)::uuid as id,
       jsonb_build_object('g', g, 'list', jsonb_build_array(g, null, 'x'), 'é', true) as jsb,
       json_build_object('g', g) as js,
       array[g, null, -g] as ints,
       array[array[g::text, 'a"b'], array['c,d', null]] as grid,
       interval '1 year 2 months 3 days 04:05:06.789' * g as span,
       date '2000-01-01' + g as day,
       case when g % 2 = 1 then null else 'even' end as maybe,
       '{tag}' as tag
  from generate_series(1, 5) g
 order by g"""


def psycopg_prepared(dsn: str, tag: str) -> list[Any]:
    """Text and binary parameters and results, each statement prepared once, run four times."""
    seen: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for placeholder, binary in (("%s", False), ("%s", True), ("%b", True), ("%t", False)):
            sql = typed_sql(tag, placeholder)
            with conn.cursor(binary=binary) as cur:
                for i in range(4):
                    cur.execute(sql, typed_params(i), prepare=True)
                    seen.append((placeholder, binary, cur.fetchall()))
                cur.execute(SERVER_SQL.format(tag=tag), prepare=True)
                seen.append(([c.name for c in cur.description or []], cur.fetchall()))
    return seen


def asyncpg_prepared(dsn: str, tag: str) -> list[Any]:
    """asyncpg's way: prepare once, then bind and execute in binary, again and again."""

    async def main() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            stmt = await conn.prepare(typed_sql(tag, "${n}"))
            seen: list[Any] = [
                [t.name for t in stmt.get_parameters()],
                [(a.name, a.type.name) for a in stmt.get_attributes()],
            ]
            for i in range(4):
                # asyncpg takes json as text
                args = [
                    json.dumps(v.obj) if isinstance(v, Json | Jsonb) else v for v in typed_params(i)
                ]
                seen.append([tuple(r) for r in await stmt.fetch(*args)])
                seen.append(tuple(await stmt.fetchrow(*args) or ()))
            server = await conn.prepare(SERVER_SQL.format(tag=tag))
            for _ in range(3):
                seen.append([tuple(r) for r in await server.fetch()])
            return seen
        finally:
            await conn.close()

    return asyncio.run(main())


def test_prepared_statements_and_binary_results_match(
    stack: Stack, gateway: str, direct: str
) -> None:
    tag = marker()
    through = psycopg_prepared(gateway, tag)
    assert repr(through) == repr(psycopg_prepared(direct, tag))  # repr: NaN != NaN
    # Equal to a direct connection, and to what was sent: the gateway changed nothing.
    assert through[1] == ("%s", False, [typed_row(1, tag)])
    assert through[6] == ("%s", True, [typed_row(1, tag)])
    assert through[11] == ("%b", True, [typed_row(1, tag)])
    assert through[16] == ("%t", False, [typed_row(1, tag)])
    assert len(through[4][1]) == 5

    through_asyncpg = asyncpg_prepared(gateway, tag)
    assert repr(through_asyncpg) == repr(asyncpg_prepared(direct, tag))
    assert through_asyncpg[2][0][:9] == typed_params(0)[:9]

    # Each execution of a statement prepared once is audited: 4 variants x 4 by psycopg,
    # 4 fetch + 4 fetchrow by asyncpg, through the gateway.
    statement = typed_sql(tag, "${n}")
    events = [e for e in db_queries(stack.events(), tag) if e["request"]["statement"] == statement]
    assert len(events) == 24
    assert {e["request"]["protocol"] for e in events} == {"extended"}


# ---- pipeline ------------------------------------------------------------------------------


def pipeline_run(dsn: str, table: str, *, autocommit: bool) -> dict[str, Any]:
    """Several statements in one pipeline, the fourth failing: what was raised, what stayed."""
    outcome: dict[str, Any] = {"results": []}
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(f"create table {table} (id int primary key, note text)")
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        steps: list[Callable[[], Any]] = [
            lambda: conn.execute(f"insert into {table} values (1, 'one') returning id, note"),
            lambda: conn.execute(f"insert into {table} values (%s, %s)", (2, "two")),
            lambda: conn.execute(f"update {table} set note = note || '!' where id = 1"),
            lambda: conn.execute(f"insert into {table} values (1, 'duplicate')"),
            lambda: conn.execute(f"insert into {table} values (3, 'after the failure')"),
            lambda: conn.execute(f"select count(*) from {table}"),
        ]
        cursors: list[psycopg.Cursor[Any]] = []
        try:
            with conn.pipeline() as pipeline:
                # Where the error surfaces depends on when psycopg reads the results (timing);
                # what is raised and what stays must not.
                for n, step in enumerate(steps):
                    cursors.append(step())
                    if n == 1:
                        pipeline.sync()
                        outcome["results"].append(cursors[0].fetchall())
        except psycopg.Error as exc:
            outcome["error"] = (type(exc).__name__, exc.sqlstate, scrub(str(exc), table))
            outcome["detail"] = exc.diag.message_detail
        if not autocommit:
            conn.rollback()
        outcome["status"] = conn.info.transaction_status.name
        outcome["still_usable"] = conn.execute("select 42").fetchone()
    with psycopg.connect(dsn, autocommit=True) as check:
        outcome["rows"] = check.execute(f"select * from {table} order by id").fetchall()
        check.execute(f"drop table {table}")
    return outcome


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_pipeline_with_a_failure_in_the_middle_matches(
    gateway: str, direct: str, autocommit: bool
) -> None:
    through, plain = both(
        gateway, direct, lambda dsn, table: pipeline_run(dsn, table, autocommit=autocommit)
    )
    assert through == plain
    assert through["error"][1] == "23505"  # the duplicate, nothing of the gateway's own


# ---- server-side cursor --------------------------------------------------------------------


def scroll(dsn: str, tag: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    with psycopg.connect(dsn) as conn, conn.cursor(name=f"big_{tag}") as cur:
        cur.itersize = 5000
        cur.execute(
            "select g, md5(g::text || %s), g * 1.5, repeat('x', g %% 17) "
            "from generate_series(1, 200000) g",
            (tag,),
        )
        for row in cur:
            digest.update(repr(row).encode())
            count += 1
    return count, digest.hexdigest()


def test_server_side_cursor_of_200k_rows_matches(gateway: str, direct: str) -> None:
    tag = marker()
    through = scroll(gateway, tag)
    assert through[0] == 200_000
    assert through == scroll(direct, tag)


# ---- a large value -------------------------------------------------------------------------

BIG = 3 * 1024 * 1024


def big_values_run(dsn: str, table: str) -> dict[str, Any]:
    rng = random.Random(7)
    blob = rng.randbytes(BIG)
    text = "".join(rng.choice("aé✓\U0001f600 z\n\t'\"\\") for _ in range(BIG // 3))
    seen: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"create table {table} (id int, b bytea, t text)")
        conn.execute(f"insert into {table} values (1, %s, %s)", (blob, text))
        conn.execute(f"insert into {table} values (2, %b, %b)", (blob, text))
        conn.execute(f"insert into {table} values (3, %t, %t)", (blob, text))
        seen["server"] = conn.execute(
            f"select id, md5(b), octet_length(b), md5(t), char_length(t) from {table} order by id"
        ).fetchall()
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                rows = cur.execute(f"select id, b, t from {table} order by id").fetchall()
                seen[f"binary={binary}"] = all(r[1] == blob and r[2] == text for r in rows)
                seen[f"rows binary={binary}"] = len(rows)
        conn.execute(f"drop table {table}")
    expected = (hashlib.md5(blob).hexdigest(), BIG, hashlib.md5(text.encode()).hexdigest())
    seen["as sent"] = [r[1:4] == (expected[0], expected[1], expected[2]) for r in seen["server"]]
    seen["length"] = len(text)
    return seen


def test_a_3mb_value_round_trips_unchanged(gateway: str, direct: str) -> None:
    through, plain = both(gateway, direct, big_values_run)
    assert through == plain
    assert through["as sent"] == [True, True, True]
    assert through["binary=False"] and through["binary=True"]


def octet_length_and_md5(dsn: str, blob: bytes) -> tuple[Any, ...] | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select octet_length(b), md5(b) from (select %b::bytea as b) as s", (blob,)
        ).fetchone()


def test_a_20mb_parameter_is_accepted_as_directly(gateway: str, direct: str) -> None:
    blob = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    expected = (len(blob), hashlib.md5(blob).hexdigest())
    assert octet_length_and_md5(direct, blob) == expected
    assert octet_length_and_md5(gateway, blob) == expected


# ---- SQLAlchemy ----------------------------------------------------------------------------


def sqlalchemy_url(dsn: str) -> str:
    return "postgresql+psycopg://" + dsn.removeprefix("postgresql://")


def sqlalchemy_run(dsn: str, table: str) -> dict[str, Any]:
    class Base(orm.DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str] = orm.mapped_column(sa.String(40), unique=True)
        price: orm.Mapped[Decimal] = orm.mapped_column(sa.Numeric(10, 2))
        tags: orm.Mapped[list[str] | None] = orm.mapped_column(sa_pg.ARRAY(sa.Text))
        data: orm.Mapped[dict[str, Any] | None] = orm.mapped_column(sa_pg.JSONB)
        at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime(timezone=True))

    def rows(session: orm.Session) -> list[tuple[Any, ...]]:
        items = session.scalars(sa.select(Item).order_by(Item.id)).all()
        return [(i.id, i.name, i.price, i.tags, i.data, i.at) for i in items]

    seen: dict[str, Any] = {}
    engine = sa.create_engine(sqlalchemy_url(dsn))
    try:
        Base.metadata.create_all(engine)
        at = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
        with orm.Session(engine) as session:
            session.add_all(
                Item(
                    id=n,
                    name=f"item {n}",
                    price=Decimal(n) / 4,
                    tags=["t", str(n)],
                    data={"n": n},
                    at=at + dt.timedelta(days=n),
                )
                for n in range(1, 6)
            )
            session.commit()
        with orm.Session(engine) as session:
            session.add(Item(id=99, name="rolled back", price=1, tags=[], data={}, at=at))
            session.flush()
            seen["inside"] = session.scalar(sa.select(sa.func.count()).select_from(Item))
            session.rollback()
            seen["after rollback"] = rows(session)
        with orm.Session(engine) as session:
            try:
                with session.begin():
                    session.get_one(Item, 1).price = Decimal("1000")
                    session.add(Item(id=7, name="item 2", price=0, tags=[], data={}, at=at))
            except sa.exc.IntegrityError as exc:
                seen["integrity"] = (type(exc.orig).__name__, scrub(str(exc.orig), table))
            seen["after failed commit"] = rows(session)
        with engine.begin() as conn:  # Core: executemany, RETURNING, a server-side update
            conn.execute(
                sa.insert(Item.__table__),
                [
                    {"id": n, "name": f"bulk {n}", "price": n, "tags": None, "data": None, "at": at}
                    for n in range(10, 60)
                ],
            )
            seen["updated"] = sorted(
                conn.execute(
                    sa.update(Item.__table__)
                    .where(Item.__table__.c.id < 3)
                    .values(price=Item.__table__.c.price * 2)
                    .returning(Item.__table__.c.id, Item.__table__.c.price)
                ).all()
            )
        with engine.connect() as conn:
            transaction = conn.begin()
            conn.execute(sa.delete(Item.__table__))
            seen["deleted, inside"] = conn.scalar(sa.select(sa.func.count()).select_from(Item))
            transaction.rollback()
            seen["count"] = conn.scalar(sa.select(sa.func.count()).select_from(Item))
            seen["sum"] = conn.scalar(sa.select(sa.func.sum(Item.__table__.c.price)))
        with orm.Session(engine) as session:
            seen["final"] = rows(session)
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
    return seen


def test_sqlalchemy_orm_and_core_with_rollback_match(gateway: str, direct: str) -> None:
    through, plain = both(gateway, direct, sqlalchemy_run)
    assert through == plain
    assert through["inside"] == 6
    assert len(through["after rollback"]) == 5
    assert through["integrity"][0] == "UniqueViolation"
    assert through["after failed commit"] == through["after rollback"]
    assert through["count"] == 55


# ---- COPY ----------------------------------------------------------------------------------


def csv_input() -> list[bytes]:
    """CSV in uneven chunks: quotes, separators and newlines inside values, NULLs, UTF-8."""
    lines = [
        f'{n},"note {n}, with ""quotes""{chr(10) if n % 7 == 0 else ""} é✓",'
        f"{n * 1.25},2024-01-{n % 28 + 1:02d} 10:00:00+00,"
        f'"{{a,{n}}}",{"" if n % 5 == 0 else f"{n:04x}"}\n'
        for n in range(5000)
    ]
    data = "".join(lines).encode()
    return [data[i : i + 7919] for i in range(0, len(data), 7919)]


def copy_run(dsn: str, table: str) -> dict[str, bytes]:
    columns = "(id int, note text, amount numeric, at timestamptz, tags text[], raw text)"
    out: dict[str, bytes] = {}
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"create table {table} {columns}")
        cur.execute(f"create table {table}_again {columns}")
        with cur.copy(f"copy {table} from stdin (format csv)") as copy:
            for chunk in csv_input():
                copy.write(chunk)
        for fmt in ("format csv, header", "format binary", "format text"):
            with cur.copy(f"copy (select * from {table} order by id) to stdout ({fmt})") as copy:
                out[fmt] = b"".join(bytes(block) for block in copy)
        with cur.copy(f"copy {table}_again from stdin (format binary)") as copy:
            copy.write(out["format binary"])
        query = f"copy (select * from {table}_again order by id) to stdout (format binary)"
        with cur.copy(query) as copy:
            out["binary again"] = b"".join(bytes(block) for block in copy)
        cur.execute(f"drop table {table}, {table}_again")
    return out


def test_copy_csv_and_binary_both_ways_match(gateway: str, direct: str) -> None:
    through, plain = both(gateway, direct, copy_run)
    assert through == plain
    assert through["binary again"] == through["format binary"]
    assert through["format csv, header"].count(b"\n") > 5000
    assert through["format binary"].startswith(b"PGCOPY\n\xff\r\n\x00")


# ---- session settings ----------------------------------------------------------------------

SETTINGS_SQL = (
    "select current_setting('application_name'), current_setting('search_path'), "
    "current_schema(), current_setting('statement_timeout'), current_setting('client_encoding'),"
    " current_user, session_user"
)
REPORTED = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
)


def settings_run(dsn: str, schema: str) -> list[Any]:
    seen: list[Any] = []
    options = f"-c search_path={schema},public -c statement_timeout=4321"
    with psycopg.connect(dsn, application_name="fidelity start", options=options) as conn:
        conn.autocommit = True

        def snapshot() -> None:
            seen.append(conn.execute(SETTINGS_SQL).fetchone())
            seen.append({name: conn.info.parameter_status(name) for name in REPORTED})

        snapshot()
        conn.execute("set application_name = 'fidelity changed'")
        conn.execute("set search_path = public")
        snapshot()
        conn.execute("reset application_name")
        conn.execute("reset search_path")
        snapshot()
        with conn.transaction():
            conn.execute("set local application_name = 'fidelity local'")
            snapshot()
        snapshot()
    return seen


def test_application_name_and_startup_options_match(gateway: str, direct: str) -> None:
    schema = marker()
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(f"create schema {schema}")
    try:
        through = settings_run(gateway, schema)
        assert through == settings_run(direct, schema)
    finally:
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute(f"drop schema {schema}")
    start = ("fidelity start", f"{schema},public", schema, "4321ms", "UTF8", "app", "app")
    assert through[0] == start
    assert through[1]["application_name"] == "fidelity start"
    assert through[3]["application_name"] == "fidelity changed"
    assert through[4][:3] == ("fidelity start", f"{schema},public", schema)
    assert through[6][0] == "fidelity local"
    assert through[8][0] == "fidelity start"


# ---- a client that stops sending -----------------------------------------------------------


def raw_startup(params: dict[str, str]) -> bytes:
    body = struct.pack("!i", 196608)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def raw_query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def backend_messages(data: bytes) -> list[tuple[str, bytes]]:
    messages, pos = [], 0
    while pos + 5 <= len(data):
        (length,) = struct.unpack_from("!i", data, pos + 1)
        messages.append((chr(data[pos]), data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return messages


def half_closed_exchange(
    address: str | tuple[str, int], user: str, database: str, password: str = ""
) -> list[Any]:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        # The answer comes well after the end of the client's stream has reached the gateway.
        query = raw_query("select 41 + 1 from pg_sleep(0.2)")
        # A password the server will ask for travels ahead too, as pipelined as the query.
        secret = password.encode() + b"\0"
        login = b"p" + struct.pack("!i", len(secret) + 4) + secret if password else b""
        sock.sendall(raw_startup({"user": user, "database": database}) + login + query)
        sock.shutdown(socket.SHUT_WR)  # all said: the client only listens now
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    # Startup chatter (keys, parameter values) differs; what answers the query must not.
    after_ready = [m for m in backend_messages(data) if m[0] not in "SKR"]
    return after_ready


def test_a_client_that_half_closes_still_gets_its_answers(
    listener: WayIn, pg: PostgresServer
) -> None:
    assert pg.socket_dir is not None
    socket_path = str(pg.socket_dir / f".s.PGSQL.{pg.port}")
    plain = half_closed_exchange(socket_path, pg.superuser, "app")
    assert [tag for tag, _ in plain] == ["Z", "T", "D", "C", "Z"]
    through = half_closed_exchange(("127.0.0.1", listener.port), "anyone", "pg", listener.password)
    assert through == plain


# ---- reconciliation with the server's statement log ----------------------------------------


def workload(stack: Stack, listener: WayIn, gateway: str, tag: str) -> None:
    """Simple and extended protocol, COPY, errors and a failed pipeline, in parallel sessions."""
    table = f"rec_{tag}"

    def psycopg_session() -> None:
        with psycopg.connect(gateway) as conn:
            conn.execute(f"create table {table} (id int primary key, note text)")
            for n in range(5):
                conn.execute(f"insert into {table} values (%s, %s)", (n, f"{tag} {n}"))
            for n in range(3):
                conn.execute(f"select note from {table} where id = %s", (n,), prepare=True)
            conn.execute(f"select count(*) as {tag} from {table}")  # simple protocol
            conn.execute(f"select 1 as {tag}; select 2 as {tag}")
            conn.commit()
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute(f"select g / %s as {tag} from generate_series(1, 2) g", (0,))
            conn.rollback()
            with psycopg.ClientCursor(conn) as cur:  # parameters inlined: simple protocol
                cur.execute(f"select %s::text as {tag}", ("client-side 'quoted'",))
            with conn.cursor() as cur, cur.copy(f"copy {table} from stdin") as copy:
                for n in range(100, 110):
                    copy.write_row((n, f"{tag} copied"))
            conn.commit()

    def pipeline_session() -> None:
        with psycopg.connect(gateway, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
                conn.execute(f"select 1 as {tag}_a")
                conn.execute(f"select g / 0 as {tag}_b from generate_series(1, 2) g")
                conn.execute(f"select 3 as {tag}_skipped")
                conn.execute(f"select %s as {tag}_skipped_too", (4,))
            conn.execute(f"select 5 as {tag}_after")

    def asyncpg_session() -> None:
        async def main() -> None:
            conn = await asyncpg.connect(gateway)
            try:
                stmt = await conn.prepare(f"select $1::int * 2 as {tag}")
                for n in range(3):
                    assert await stmt.fetchval(n) == n * 2
                await conn.execute(f"select 'simple' as {tag}; select 'twice' as {tag}")
                await conn.fetch(f"select $1::text || '{tag}' as x", "p")
            finally:
                await conn.close()

        asyncio.run(main())

    def psql_session() -> None:
        psql = shutil.which("psql")
        assert psql
        command = [psql, listener.dsn(), "-X", "-At"]
        for sql in (f"select 'psql' as {tag}", f"select 1 as {tag}; select 2 as {tag}"):
            run = subprocess.run(
                [*command, "-c", sql], capture_output=True, text=True, timeout=30, check=False
            )
            assert run.returncode == 0, run.stderr

    def exec_session() -> None:
        run = stack.cli("exec", "pg", "-c", f"select 'exec' as {tag}")
        assert run.returncode == 0, run.stderr

    sessions = [psycopg_session, pipeline_session, asyncpg_session, psql_session, exec_session]
    with ThreadPoolExecutor(len(sessions)) as pool:
        for done in [pool.submit(session) for session in sessions]:
            done.result()
    with psycopg.connect(gateway, autocommit=True) as conn:
        conn.execute(f"drop table {table}")


def log_size(pg: PostgresServer) -> int:
    return Path(pg.log_file).stat().st_size


def test_every_logged_statement_is_audited_and_every_audited_one_logged(
    stack: Stack, listener: WayIn, gateway: str, pg: PostgresServer
) -> None:
    tag = marker()
    after = stack.events()[-1]["seq"]
    offset = log_size(pg)
    workload(stack, listener, gateway, tag)
    with Path(pg.log_file).open("rb") as log:
        log.seek(offset)
        logged = parse_statement_log(log.read().decode("utf-8", errors="replace"))
    events = stack.events(after)
    queries = [e for e in events if e["type"] == "db.query"]
    results = {e["ref"]: e["result"] for e in events if e["type"] == "db.result"}
    assert {q["decision"]["result"] for q in queries} == {"allow"}
    # Statements of a failed pipeline after its error are recorded, and marked as not run.
    skipped = [
        q["request"]["statement"]
        for q in queries
        if results.get(q["seq"], {}).get("error") == "skipped"
    ]
    assert sorted(skipped) == sorted(
        [f"select 3 as {tag}_skipped", f"select $1 as {tag}_skipped_too"]
    )
    executed = [
        q["request"]["statement"]
        for q in queries
        if results.get(q["seq"], {}).get("error") != "skipped"
    ]
    assert len(executed) > 30
    assert any(f"select $1::int * 2 as {tag}" == s for s in executed)
    missing_events = Counter(logged) - Counter(executed)
    missing_from_log = Counter(executed) - Counter(logged)
    assert not missing_events, f"run by PostgreSQL, not audited: {missing_events}"
    assert not missing_from_log, f"audited as run, never run: {missing_from_log}"


def session_events(stack: Stack, needle: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The events of the sessions that ran a statement containing `needle`, once they ended."""
    deadline = time.monotonic() + timeout
    while True:
        events = stack.events()
        sessions = {q["session_id"] for q in db_queries(events, needle)}
        ended = {e["session_id"] for e in events if e["type"] == "session.end"}
        if (sessions and sessions <= ended) or time.monotonic() > deadline:
            return [e for e in events if e.get("session_id") in sessions]
        time.sleep(0.2)


def test_results_after_a_pipeline_belong_to_their_own_statements(
    stack: Stack, gateway: str
) -> None:
    tag = marker()
    with psycopg.connect(gateway, autocommit=True) as conn:
        with conn.pipeline():
            conn.execute(f"select 1 as {tag}_pipelined")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute(f"select 1 / 0 as {tag}_fails")
        assert conn.execute(f"select 7 as {tag}_succeeds").fetchone() == (7,)
    events = session_events(stack, tag)
    results = {e["ref"]: e["result"] for e in events if e["type"] == "db.result"}
    outcome = {
        q["request"]["statement"].split(" as ")[-1]: results.get(q["seq"])
        for q in db_queries(events, tag)
    }
    assert outcome[f"{tag}_pipelined"]["rows"] == 1
    assert outcome[f"{tag}_fails"]["error"] == "22012"
    assert outcome[f"{tag}_succeeds"] is not None
    assert outcome[f"{tag}_succeeds"]["error"] is None
    assert outcome[f"{tag}_succeeds"]["rows"] == 1

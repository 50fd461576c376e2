"""A gateway in front of a throwaway PostgreSQL, set up to be judged by the server's own log.

The PostgreSQL suites (test_pg_truth, test_pg_adversarial, the differential fuzzer and its long
run in bench.pgfuzz, test_guardrails) need the same things: a policy with a guarded connection
`pg` (and `pg-open`, the same database without guardrails), a `gatehouse connect` listener, a
sentinel table an attack would damage, and a window that reconciles what the server logged with
the trail written meanwhile (`pglog.reconcile`). The fixtures in tests/e2e/conftest.py build
them from here.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from devenv.postgres import PostgresServer
from devenv.stack import Connect
from tests.e2e import pglog

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack  # the conftest builds its fixtures from this module

GUARDED = "pg"  # behind guardrail `no-destructive`
OPEN = "pg-open"  # the same database, no guardrails
RULE = "no-destructive"

Events = Callable[[int], list[dict[str, Any]]]


def policy(
    port: int,
    agent: str,
    *,
    deny_statements: Sequence[str] = ("DROP", "TRUNCATE"),
    deny_unbounded: Sequence[str] = ("DELETE",),
    deny_patterns: Sequence[str] = (),
) -> str:
    """The policy file: `pg` guarded by `no-destructive`, and `pg-open` without guardrails."""
    target = f"{{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}"
    connection = """\
  - name: {name}
    type: postgres
    agent: {agent}
    target: {target}
    secret: {{password: env:PG_PASSWORD}}
"""
    rule = {
        "name": RULE,
        "deny_statements": list(deny_statements),
        "deny_unbounded": list(deny_unbounded),
        "deny_patterns": list(deny_patterns),
    }
    return (
        "connections:\n"
        + connection.format(name=GUARDED, agent=agent, target=target)
        + f"    guardrails: [{RULE}]\n"
        + connection.format(name=OPEN, agent=agent, target=target)
        + f"guardrails:\n  - {json.dumps({k: v for k, v in rule.items() if v})}\n"
    )


def guard(stack: Stack, **rules: Sequence[str]) -> Stack:
    """Apply `policy` (with these guardrail rules) to the stack's control plane."""
    applied = stack.apply(policy(stack.pg.port, stack.agent.name, **rules))
    assert applied.returncode == 0, applied.stderr
    return stack


@contextlib.contextmanager
def listening(stack: Stack, connection: str = GUARDED) -> Iterator[Connect]:
    """A `gatehouse connect` listener for one connection, stopped afterwards."""
    process = Connect.create(stack.controlplane, connection, stack.base)
    process.start_and_wait()
    try:
        yield process
    finally:
        process.stop()


def http_events(stack: Stack) -> Events:
    """Events after a seq, read over the export API (much cheaper than a CLI process)."""
    cp = stack.controlplane
    return lambda after: pglog.http_events(cp.http_port, cp.token, after)


def last_seq(events: Events) -> int:
    found = events(0)
    return found[-1]["seq"] if found else 0


def ended(events: Events, after: int, timeout: float = 15) -> list[dict[str, Any]] | None:
    """The events after `after` once every session among them has ended; None if one did not."""
    deadline = time.monotonic() + timeout
    while True:
        found = events(after)
        starts = {e["session_id"] for e in found if e["type"] == "session.start"}
        ends = {e["session_id"] for e in found if e["type"] == "session.end"}
        if starts and starts <= ends:
            return found
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


class Window:
    """One test's sessions: the server's log and the trail written meanwhile."""

    def __init__(self, events: Events, log_file: Path, after: int | None = None) -> None:
        self._events = events
        self.after = last_seq(events) if after is None else after
        self.log = pglog.LogWindow(log_file)

    def events(self) -> list[dict[str, Any]]:
        """The window's events once every session of it has ended."""
        found = ended(self._events, self.after)
        assert found is not None, "a session of the window did not end"
        return found

    def trail(self) -> pglog.Trail:
        return pglog.Trail.of(self.events())

    def problems(self, events: list[dict[str, Any]]) -> list[str]:
        """What is wrong between the server's log and these events (empty: they agree)."""
        trail = pglog.Trail.of(events)
        text = self.log.text()
        return pglog.reconcile(pglog.ran(text), trail) + pglog.cursor_claims(text, trail)

    def reconcile(self) -> pglog.Trail:
        """Every statement the server ran has an allowed `db.query` with exactly its text, none
        denied ran, and no event claims a cursor text a function may have replaced."""
        events = self.events()
        problems = self.problems(events)
        assert not problems, "\n".join(problems)
        return pglog.Trail.of(events)

    def never_logged(self, needle: str) -> None:
        ran = self.log.ran()
        assert not [s for s in ran.statements if needle in s], f"{needle!r} reached PostgreSQL"


def make_table(pg: PostgresServer, name: str, rows: int = 3) -> None:
    """A table owned by the target's user, made as the superuser with logging off (so that it
    stays out of every log window)."""
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")
        conn.execute(f"create table {name} (id int)")
        if rows:
            values = ", ".join(f"({n})" for n in range(1, rows + 1))
            conn.execute(f"insert into {name} values {values}")
        conn.execute(f"alter table {name} owner to app")


def drop_table(pg: PostgresServer, name: str) -> None:
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")


def rows(pg: PostgresServer, table: str) -> int | None:
    """The table's row count, or None when it no longer exists."""
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        exists = conn.execute("select to_regclass(%s)", (table,)).fetchone()
        if exists is None or exists[0] is None:
            return None
        count = conn.execute(f"select count(*) from {table}").fetchone()
        return None if count is None else int(count[0])


def admin(pg: PostgresServer, *statements: str) -> None:
    """Statements run directly as the superuser, unlogged: setup the trail must not see."""
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


# Code that closes a cursor and opens another under the same name, in each way PostgreSQL runs
# user code: a function in a SELECT, a procedure, a DO block (which calls the function), a
# trigger. Each announces what it opened in the server's log (pglog.OPENED_BY_CODE); and a
# function that deallocates a prepared statement and prepares another text under its name
# (pglog.PREPARED_BY_CODE).
CURSOR_CODE = (
    f"""
create or replace function reopen(name text, query text) returns int language plpgsql as $$
declare
  r refcursor := name;
begin
  begin
    close r;
  exception when invalid_cursor_name then
    null;
  end;
  open r for execute query;
  raise log '{pglog.OPENED_BY_CODE}%', name;
  return 1;
end $$""",
    f"""
create or replace function opens(name text default null) returns refcursor
language plpgsql as $$
declare
  r refcursor := name;
begin
  open r for select 'opened by a function' as v;
  raise log '{pglog.OPENED_BY_CODE}%', r;
  return r;
end $$""",
    """
create or replace procedure reopen_later(name text, query text) language plpgsql as $$
begin
  perform reopen(name, query);
end $$""",
    """
create or replace function reopen_on_insert() returns trigger language plpgsql as $$
begin
  perform reopen(new.name, new.query);
  return new;
end $$""",
    f"""
create or replace function reprepare(name text, query text) returns int language plpgsql as $$
begin
  begin
    execute format('deallocate %I', name);
  exception when invalid_sql_statement_name then
    null;
  end;
  execute format('prepare %I as %s', name, query);
  raise log '{pglog.PREPARED_BY_CODE}%', name;
  return 1;
end $$""",
    "create table if not exists reopens (name text, query text)",
    "alter table reopens owner to app",
    """
create or replace trigger reopen after insert on reopens
for each row execute function reopen_on_insert()""",
)


def create_cursor_code(pg: PostgresServer) -> None:
    """The functions, procedure and trigger of CURSOR_CODE (made directly: not logged)."""
    admin(pg, *CURSOR_CODE)

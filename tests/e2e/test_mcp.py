"""`gatehouse mcp` driven by the MCP SDK's own client over stdio: the tools run on a real
PostgreSQL and a real sshd through a control plane and an agent, with a delegated token, and
every call is in the trail with the person and the agent."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mcp import ClientSession

from cli.protocols import MAX_RESULT_BYTES
from controlplane.http.mcp import MAX_SESSIONS
from devenv.sshd import Sshd
from tests.e2e import mcpclient
from tests.e2e.conftest import Stack, ssh_policy
from tests.e2e.mcpclient import RawSession, Work, call

T = TypeVar("T")
ACTOR = "claude-test"


@pytest.fixture(scope="module")
def mcp_stack(stack: Stack, sshd: Sshd) -> Iterator[Stack]:
    policy = ssh_policy(stack, sshd)
    policy = policy.replace(
        "    secret: {password: env:PG_PASSWORD}\n",
        "    secret: {password: env:PG_PASSWORD}\n    guardrails: [no-drop]\n",
        1,
    ) + ("  - name: no-drop\n    deny_statements: [DROP]\n")
    applied = stack.apply(policy)
    assert applied.returncode == 0, applied.stderr
    yield stack


@pytest.fixture(scope="module")
def agent_token(mcp_stack: Stack) -> str:
    created = mcp_stack.cli(
        "tokens", "create", "--actor", ACTOR, "--ttl", "1h", "--role", "admin", "-o", "json"
    )
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["secret"])


def over_stdio(stack: Stack, token: str, work: Work[T]) -> T:
    return mcpclient.over_stdio({**stack.controlplane.cli_env, "GATEHOUSE_TOKEN": token}, work)


def test_tools_are_listed_with_their_schemas(mcp_stack: Stack, agent_token: str) -> None:
    async def work(session: ClientSession) -> Any:
        return await session.list_tools()

    listed = over_stdio(mcp_stack, agent_token, work)
    tools = {t.name: t for t in listed.tools}
    assert set(tools) == {
        "list_connections",
        "query",
        "run_command",
        "describe",
        "http_request",
        "request_access",
        "review_status",
    }
    assert tools["query"].input_schema["required"] == ["connection", "sql"]
    assert tools["run_command"].input_schema["required"] == ["connection", "command"]


def test_query_runs_on_postgres_and_is_recorded_with_person_and_agent(
    mcp_stack: Stack, agent_token: str
) -> None:
    marker = f"mcp-{uuid.uuid4().hex[:8]}"
    after = mcp_stack.events()[-1]["seq"]

    async def work(session: ClientSession) -> Any:
        listed = await call(session, "list_connections")
        queried = await call(
            session,
            "query",
            connection="pg",
            sql=f"select $1::text as m, 41 + 1 as n -- {marker}",
            params=["hello"],
        )
        capped = await call(
            session,
            "query",
            connection="pg",
            sql="select generate_series(1, 50) as i",
            max_rows=5,
        )
        return listed, queried, capped

    listed, queried, capped = over_stdio(mcp_stack, agent_token, work)
    assert listed[0] is False
    names = {c["name"]: c for c in listed[1]["connections"]}
    assert names["pg"]["type"] == "postgres" and "exec" in names["pg"]["modes"]
    assert names["pg"]["tool"] == "query" and names["web-1"]["tool"] == "run_command"
    assert queried == (
        False,
        {
            "columns": ["m", "n"],
            "rows": [["hello", 42]],
            "command": "SELECT 1",
            "truncated": False,
            "row_count": 1,
            "session_id": queried[1]["session_id"],
        },
    )
    assert capped[1]["rows"] == [[1], [2], [3], [4], [5]] and capped[1]["truncated"] is True
    assert any(marker in line for line in mcp_stack.pg.statement_log())

    events = mcp_stack.events(after)
    calls = [e for e in events if e["type"] == "mcp.call"]
    assert [c["tool"] for c in calls] == ["list_connections", "query", "query"]
    query_call = calls[1]
    assert query_call["actor"] == ACTOR and query_call["user"]["sub"]
    assert query_call["arguments"]["params"] == ["hello"]
    assert query_call["mcp_client"]  # the MCP client's own name, as it introduced itself
    session = [e for e in events if e.get("session_id") == queried[1]["session_id"]]
    assert [e["type"] for e in session] == [
        "session.start",
        "db.query",
        "db.result",
        "session.end",
    ]
    for event in session:
        assert event["mcp_call"] == {"seq": query_call["seq"], "id": query_call["id"]}
        assert event["actor"] == ACTOR and event["user"] == query_call["user"]


def test_describe_lists_tables_through_the_audited_path(mcp_stack: Stack, agent_token: str) -> None:
    table = f"mcp_{uuid.uuid4().hex[:8]}"
    made = mcp_stack.cli("exec", "pg", "-c", f"create table {table} (id int not null, note text)")
    assert made.returncode == 0, made.stderr
    after = mcp_stack.events()[-1]["seq"]

    async def work(session: ClientSession) -> Any:
        return await call(session, "describe", connection="pg", table=table)

    error, described = over_stdio(mcp_stack, agent_token, work)
    assert error is False, described
    assert described["tables"] == [
        {
            "schema": "public",
            "name": table,
            "columns": [
                {"name": "id", "type": "integer", "nullable": False},
                {"name": "note", "type": "text", "nullable": True},
            ],
        }
    ]
    queries = [e for e in mcp_stack.events(after) if e["type"] == "db.query"]
    assert len(queries) == 1 and "information_schema.columns" in queries[0]["request"]["statement"]
    assert queries[0]["actor"] == ACTOR


def test_guardrail_refusal_and_unknown_connection_are_tool_errors_and_reach_nothing(
    mcp_stack: Stack, agent_token: str
) -> None:
    marker = f"mcp_drop_{uuid.uuid4().hex[:8]}"

    async def work(session: ClientSession) -> Any:
        denied = await call(session, "query", connection="pg", sql=f"drop table {marker}")
        unknown = await call(session, "query", connection="nope", sql=f"select '{marker}'")
        still = await call(session, "query", connection="pg", sql="select 1 as one")
        return denied, unknown, still

    denied, unknown, still = over_stdio(mcp_stack, agent_token, work)
    assert denied[0] is True and "no-drop" in denied[1] and "42501" in denied[1]
    assert unknown[0] is True and "nope" in unknown[1]
    assert still == (False, {**still[1], "rows": [[1]]})  # the server goes on
    assert not any(marker in line for line in mcp_stack.pg.statement_log())
    events = mcp_stack.events()
    refused = [e for e in events if e["type"] == "db.query" and marker in e["request"]["statement"]]
    assert refused[-1]["decision"]["result"] == "deny" and refused[-1]["mcp_call"]["seq"]


def test_run_command_over_ssh_and_its_guardrail(
    mcp_stack: Stack, agent_token: str, tmp_path: Path
) -> None:
    marker = tmp_path / f"ran-{uuid.uuid4().hex[:8]}"
    after = mcp_stack.events()[-1]["seq"]

    async def work(session: ClientSession) -> Any:
        ran = await call(
            session,
            "run_command",
            connection="web-1",
            command=f"touch {marker}; cat; echo err >&2; exit 3",
            stdin="from stdin\n",
        )
        denied = await call(session, "run_command", connection="web-1", command="rm -rf /")
        wrong = await call(session, "run_command", connection="pg", command="ls")
        return ran, denied, wrong

    ran, denied, wrong = over_stdio(mcp_stack, agent_token, work)
    assert ran[0] is False, ran
    assert (ran[1]["exit_status"], ran[1]["stdout"], ran[1]["stderr"]) == (
        3,
        "from stdin\n",
        "err\n",
    )
    assert marker.exists()
    assert denied[0] is True and "no-rm-root" in denied[1]
    assert wrong[0] is True and "use query" in wrong[1]
    events = mcp_stack.events(after)
    command = next(e for e in events if e["type"] == "ssh.exec" and str(marker) in json.dumps(e))
    call_event = next(e for e in events if e["seq"] == command["mcp_call"]["seq"])
    assert call_event["type"] == "mcp.call" and call_event["tool"] == "run_command"
    assert call_event["arguments"]["stdin"]["bytes"] == len("from stdin\n")
    assert command["actor"] == ACTOR
    refusal = [e for e in events if e["type"] == "ssh.exec" and "rm -rf /" in json.dumps(e)]
    assert refusal[-1]["decision"]["result"] == "deny"


def test_run_command_with_a_secret_runs_it_and_records_neither_call_nor_command_with_it(
    mcp_stack: Stack, agent_token: str
) -> None:
    """An AI agent's command line with a token in it: the command gets the token, while the
    `mcp.call` and the `ssh.exec` it causes both record it masked, and say so."""
    after = mcp_stack.events()[-1]["seq"]
    secret = f"S3cret-{uuid.uuid4().hex[:12]}"
    command = f"printf '%s\\n' --token {secret} https://bot:{secret}@example.com/"

    async def work(session: ClientSession) -> Any:
        return await call(session, "run_command", connection="web-1", command=command)

    ran = over_stdio(mcp_stack, agent_token, work)
    assert ran[0] is False, ran
    assert ran[1]["stdout"] == f"--token\n{secret}\nhttps://bot:{secret}@example.com/\n"
    events = mcp_stack.events(after)
    assert secret not in json.dumps(events)
    masked = command.replace(secret, "****")
    [call_event] = [e for e in events if e["type"] == "mcp.call"]
    assert call_event["arguments"]["command"] == masked and call_event["masked"] is True
    [exec_event] = [e for e in events if e["type"] == "ssh.exec"]
    assert exec_event["request"] == {"command": masked, "masked": True}
    assert exec_event["mcp_call"]["seq"] == call_event["seq"]


def mcp_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.controlplane.http_port}/mcp"


def over_raw(stack: Stack, token: str, work: Callable[[RawSession], Awaitable[T]]) -> T:
    """`work` on an initialized MCP session spoken by hand (RawSession)."""
    import httpx2

    async def run() -> T:
        async with httpx2.AsyncClient(timeout=30) as http:
            raw = RawSession(http, mcp_url(stack), token)
            await raw.initialize()
            return await work(raw)

    return asyncio.run(asyncio.wait_for(run(), 90))


def test_the_remote_endpoint_runs_the_same_tools_inside_the_control_plane(
    mcp_stack: Stack, agent_token: str, tmp_path: Path
) -> None:
    marker = f"mcp-http-{uuid.uuid4().hex[:8]}"
    touched = tmp_path / marker
    after = mcp_stack.events()[-1]["seq"]

    async def work(session: ClientSession) -> Any:
        tools = await session.list_tools()
        queried = await call(session, "query", connection="pg", sql=f"select '{marker}' as m")
        denied = await call(session, "query", connection="pg", sql=f"drop table {marker}")
        unknown = await call(session, "describe", connection="nope")
        ran = await call(
            session, "run_command", connection="web-1", command=["touch", str(touched)]
        )
        return tools, queried, denied, unknown, ran

    tools, queried, denied, unknown, ran = mcpclient.over_http(
        mcp_url(mcp_stack), agent_token, work
    )
    assert len(tools.tools) == 7
    assert queried == (False, {**queried[1], "rows": [[marker]], "command": "SELECT 1"})
    assert denied[0] is True and "no-drop" in denied[1]
    assert unknown[0] is True and "nope" in unknown[1]
    assert ran[0] is False and ran[1]["exit_status"] == 0 and touched.exists()
    log = mcp_stack.pg.statement_log()
    assert any(f"select '{marker}'" in line for line in log)
    assert not any(f"drop table {marker}" in line for line in log)

    events = mcp_stack.events(after)
    calls = {e["seq"]: e for e in events if e["type"] == "mcp.call"}
    assert [c["tool"] for c in calls.values()] == ["query", "query", "describe", "run_command"]
    assert all(c["actor"] == ACTOR and c["source"]["ip"] == "127.0.0.1" for c in calls.values())
    query = next(
        e for e in events if e["type"] == "db.query" and marker in e["request"]["statement"]
    )
    assert calls[query["mcp_call"]["seq"]]["tool"] == "query" and query["actor"] == ACTOR
    command = next(e for e in events if e["type"] == "ssh.exec")
    assert calls[command["mcp_call"]["seq"]]["tool"] == "run_command"


def test_a_command_past_its_timeout_is_killed_and_says_so(
    mcp_stack: Stack, agent_token: str
) -> None:
    async def work(session: ClientSession) -> Any:
        return await call(
            session,
            "run_command",
            connection="ops",
            command="echo started; exec sleep 120",
            timeout_s=1,
        )

    error, ran = over_stdio(mcp_stack, agent_token, work)
    assert error is False, ran
    assert ran["timed_out"] is True and ran["stdout"] == "started\n"
    assert ran["exit_status"] != 0
    events = [e for e in mcp_stack.events() if e.get("session_id") == ran["session_id"]]
    assert [e["type"] for e in events][-2:] == ["shell.result", "session.end"]


def test_run_command_with_an_empty_command_is_no_login_shell(
    mcp_stack: Stack, agent_token: str, tmp_path: Path
) -> None:
    """An empty command line is a shell request to sshd: the target's login shell would run
    the tool's stdin, unchecked and unrecorded."""
    marker = tmp_path / f"ran-{uuid.uuid4().hex[:8]}"

    async def work(session: ClientSession) -> Any:
        return await call(
            session, "run_command", connection="web-1", command=[""], stdin=f"touch {marker}\n"
        )

    empty = mcpclient.over_http(mcp_url(mcp_stack), agent_token, work)
    assert empty[0] is True, empty
    assert not marker.exists()


def recorded(stack: Stack, marker: str, timeout: float = 20.0) -> None:
    """Wait until a db.query holding `marker` is in the trail."""
    deadline = time.monotonic() + timeout
    while not any(
        e["type"] == "db.query" and marker in e["request"]["statement"] for e in stack.events()
    ):
        assert time.monotonic() < deadline, f"no db.query with {marker}"
        time.sleep(0.2)


def session_of(stack: Stack, marker: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The events of the session whose statement holds `marker`, once it has ended (or what
    there is of them after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        events = stack.events()
        query = next(
            (e for e in events if e["type"] == "db.query" and marker in e["request"]["statement"]),
            None,
        )
        session = [e for e in events if query and e.get("session_id") == query["session_id"]]
        if any(e["type"] == "session.end" for e in session) or time.monotonic() > deadline:
            return session
        time.sleep(0.5)


def test_a_cancelled_call_ends_its_session_with_its_result_recorded(
    mcp_stack: Stack, agent_token: str
) -> None:
    """An agent's host cancels a call (its timeout, the user's Esc) while its statement runs:
    `notifications/cancelled` stops the tool, and its session must end too — recorded, with
    the statement's result — rather than stay open to the database with nobody reading it."""
    marker = f"mcp_cancel_{uuid.uuid4().hex[:8]}"

    async def work(raw: RawSession) -> Any:
        sql = f"select pg_sleep(3), '{marker}' as m"
        calling = asyncio.create_task(raw.call(5, "query", connection="pg", sql=sql))
        await asyncio.to_thread(recorded, mcp_stack, marker)  # the statement is on its way
        await asyncio.sleep(0.5)
        cancelled = await raw.post(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
        )
        await asyncio.wait({calling}, timeout=5)  # a cancelled request is never answered
        calling.cancel()
        after = await raw.call(6, "query", connection="pg", sql="select 1 as one")
        return cancelled, after

    cancelled, after = over_raw(mcp_stack, agent_token, work)
    assert cancelled[0] == 202
    assert after[0] == 200 and after[1][-1]["result"]["structuredContent"]["rows"] == [[1]]
    events = session_of(mcp_stack, marker)
    assert [e["type"] for e in events] == [
        "session.start",
        "db.query",
        "db.result",
        "session.end",
    ], events


@pytest.mark.parametrize("actor", ["intruder", ACTOR])
def test_another_token_cannot_use_a_session_it_did_not_open(
    mcp_stack: Stack, agent_token: str, actor: str
) -> None:
    """An agent whose token may use only web-1 learns another agent's Mcp-Session-Id. With
    it, its own call under the request id of the other's call in flight was answered with
    the other call's rows (from pg, which its token may not use), and its DELETE ended the
    other's session. A session is the credential's that opened it: to any other, not found,
    even to another token of the same person and agent name (its connections may differ)."""
    created = mcp_stack.cli(
        "tokens",
        "create",
        "--actor",
        actor,
        "--connections",
        "web-1",
        "--role",
        "admin",
        "-o",
        "json",
    )
    assert created.returncode == 0, created.stderr
    intruder = str(json.loads(created.stdout)["secret"])
    marker = f"mcp_owned_{uuid.uuid4().hex[:8]}"

    async def work(raw: RawSession) -> Any:
        sql = f"select pg_sleep(2), '{marker}' as m"
        owner = asyncio.create_task(raw.call(7, "query", connection="pg", sql=sql))
        await asyncio.to_thread(recorded, mcp_stack, marker)
        stolen = await raw.call(
            7, "run_command", token=intruder, connection="web-1", command="sleep 4"
        )
        done, _ = await asyncio.wait({owner}, timeout=10)
        owner.cancel()
        own = owner.result() if done else "no answer"
        response = await raw.http.delete(raw.url, headers=raw.headers(intruder))
        after = await raw.call(8, "query", connection="pg", sql="select 1 as one")
        return stolen, own, response.status_code, after

    stolen, own, deleted, after = over_raw(mcp_stack, agent_token, work)
    assert marker not in json.dumps(stolen)
    assert stolen[0] == 404, stolen
    assert own[0] == 200 and own[1][-1]["result"]["structuredContent"]["rows"][0][1] == marker
    assert deleted == 404
    assert after[0] == 200 and after[1][-1]["result"]["structuredContent"]["rows"] == [[1]]


Answer = tuple[int, list[Any]]


def test_one_person_cannot_take_every_mcp_session(mcp_stack: Stack, agent_token: str) -> None:
    """An agent opens MCP sessions (initialize) and never ends them. It is refused at its
    person's limit, saying why — and so is a token of the same person under another agent
    name, which anyone may create — while another holder still gets a session; before, it
    took all 1 000 of the replica for 30 minutes and every other agent was turned away."""
    import httpx2

    created = mcp_stack.cli("tokens", "create", "--actor", "another", "-o", "json")
    assert created.returncode == 0, created.stderr
    same_person = str(json.loads(created.stdout)["secret"])
    created = mcp_stack.cli("admin", "tokens", "create", f"m-{uuid.uuid4().hex[:6]}", "-o", "json")
    assert created.returncode == 0, created.stderr
    someone_else = str(json.loads(created.stdout)["secret"])
    opened: list[RawSession] = []

    async def run() -> tuple[list[Answer], Answer, Answer, Answer]:
        async with httpx2.AsyncClient(timeout=30) as http:
            gate = asyncio.Semaphore(20)

            async def initialize(token: str) -> Answer:
                async with gate:
                    raw = RawSession(http, mcp_url(mcp_stack), token)
                    answer = await raw.post(raw.initialize_message())
                    if raw.session_id:
                        opened.append(raw)
                    return answer

            async def delete_all() -> None:
                while opened:
                    raw = opened.pop()
                    await http.delete(raw.url, headers=raw.headers())

            try:
                hoarded = await asyncio.gather(
                    *(initialize(agent_token) for _ in range(MAX_SESSIONS + 1))
                )
                # Another token's 404 for one of them does not count it as gone.
                foreign = await http.post(
                    opened[0].url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers=opened[0].headers(same_person),
                )
                assert foreign.status_code == 404, foreign.text
                renamed = await initialize(same_person)
                others = await initialize(someone_else)
                await delete_all()
                return hoarded, renamed, others, await initialize(agent_token)  # freed
            finally:
                await delete_all()

    hoarded, renamed, others, again = asyncio.run(asyncio.wait_for(run(), 120))
    refused = [h for h in hoarded if h[0] != 200]
    assert refused and all(h[0] == 429 for h in refused), refused[:3]
    assert "MCP sessions" in refused[0][1][0]["error"]["message"]
    assert renamed[0] == 429, renamed
    assert others[0] == 200, others
    assert again[0] == 200, again


def test_a_huge_result_is_truncated_without_the_control_plane_holding_it(
    mcp_stack: Stack, agent_token: str
) -> None:
    """On /mcp the tools run inside the control plane: a query whose result is 60 MB (and
    under max_rows) was kept whole there and held several times over (rows, their JSON
    twice, the SSE event) — 60 MB cost it over 500 MB — so one agent could exhaust its
    memory, for an answer an MCP client cannot even take. The rows kept are now bounded in
    bytes too: the rest are read and left out, as past max_rows."""
    proc = mcp_stack.controlplane.proc
    assert proc is not None
    status = Path(f"/proc/{proc.pid}/status")
    sql = "select i, repeat('x', 1000000) as x from generate_series(1, 60) as i"

    def resident() -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    async def work(raw: RawSession) -> Any:
        peak = before = resident()
        calling = asyncio.create_task(raw.call(3, "query", connection="pg", sql=sql, max_rows=60))
        while not calling.done():
            peak = max(peak, resident())
            await asyncio.sleep(0.02)
        return calling.result(), peak - before

    answer, grown = over_raw(mcp_stack, agent_token, work)
    result = answer[1][-1]["result"]
    assert result["isError"] is False, str(result)[:300]
    queried = result["structuredContent"]
    assert queried["truncated"] is True and queried["command"] == "SELECT 60"
    assert [row[0] for row in queried["rows"]] == list(range(1, len(queried["rows"]) + 1))
    assert len(json.dumps(queried)) <= MAX_RESULT_BYTES + 4096
    assert grown < 100 * 1024 * 1024, grown

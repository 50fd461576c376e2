"""The MCP tools on MySQL and HTTP connections, driven by the MCP SDK's own client over stdio:
`query` and `describe` on a throwaway MariaDB (judged by its general query log), and
`http_request` against httpbin behind nginx (judged by nginx's access log). Every call is in the
trail with the person and the agent; a refused statement or request never reaches the target."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import ClientSession

from cli.protocols import MAX_RESULT_BYTES
from devenv.httpd import HttpTargets
from devenv.mariadb import MariadbServer
from tests.e2e import mcpclient, mysqlgate
from tests.e2e.mcpclient import call
from tests.e2e.mysqlgate import MysqlStack

ACTOR = "agent-protocols"
API = """\
  - name: api
    type: http
    agent: {agent}
    target: {{url: 'http://127.0.0.1:{port}'}}
    guardrails: [api-rules]
guardrails:
  - name: api-rules
    deny_requests: ['DELETE /**']
"""


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, mariadb: MariadbServer, http_targets: HttpTargets
) -> Iterator[MysqlStack]:
    started = mysqlgate.start(tmp_path_factory.mktemp("mcp-protocols"), mariadb)
    path = started.base / "protocols.yaml"
    mysql = mysqlgate.POLICY.format(agent=mysqlgate.AGENT, port=mariadb.port, ca=mariadb.ca_file)
    api = API.format(agent=mysqlgate.AGENT, port=http_targets.port)
    path.write_text(mysql.replace("guardrails:\n", api, 1))
    applied = started.cli("admin", "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    yield started
    started.stop()


@pytest.fixture(scope="module")
def env(stack: MysqlStack) -> dict[str, str]:
    created = stack.cli(
        "tokens", "create", "--actor", ACTOR, "--ttl", "1h", "--role", "admin", "-o", "json"
    )
    assert created.returncode == 0, created.stderr
    return {**stack.controlplane.cli_env, "GATEHOUSE_TOKEN": json.loads(created.stdout)["secret"]}


@pytest.fixture
def table(mariadb: MariadbServer) -> Iterator[str]:
    """A table made directly (not in the general log)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    mariadb.admin(
        f"CREATE TABLE app.{name} (id INT NOT NULL PRIMARY KEY, note VARCHAR(80));"
        f" INSERT INTO app.{name} VALUES (1, 'one'), (2, NULL)"
    )
    yield name
    mariadb.admin(f"DROP TABLE IF EXISTS app.{name}")


def session_events(events: list[dict[str, Any]], session_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("session_id") == session_id]


def test_list_connections_names_the_tool_for_each(stack: MysqlStack, env: dict[str, str]) -> None:
    async def work(session: ClientSession) -> Any:
        return await call(session, "list_connections")

    error, listed = mcpclient.over_stdio(env, work)
    assert error is False, listed
    tools = {c["name"]: (c["type"], c["tool"]) for c in listed["connections"]}
    assert tools["my"] == ("mysql", "query") and tools["api"] == ("http", "http_request")


def test_query_on_mysql_is_capped_and_recorded_with_person_and_agent(
    stack: MysqlStack, env: dict[str, str], mariadb: MariadbServer, table: str
) -> None:
    marker = f"mcp-{uuid.uuid4().hex[:8]}"
    after = stack.last_seq()
    many = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 50) "

    async def work(session: ClientSession) -> Any:
        rows = await call(
            session,
            "query",
            connection="my",
            sql=f"SELECT id, note, '{marker}' AS m FROM {table} ORDER BY id",
        )
        capped = await call(
            session, "query", connection="my", sql=f"{many}SELECT i FROM r", max_rows=5
        )
        changed = await call(
            session, "query", connection="my", sql=f"UPDATE {table} SET note = 'two' WHERE id = 2"
        )
        return rows, capped, changed

    rows, capped, changed = mcpclient.over_stdio(env, work)
    assert rows == (
        False,
        {
            "columns": ["id", "note", "m"],
            "rows": [[1, "one", marker], [2, None, marker]],
            "affected_rows": None,
            "truncated": False,
            "row_count": 2,
            "session_id": rows[1]["session_id"],
        },
    )
    assert capped[1]["rows"] == [[1], [2], [3], [4], [5]] and capped[1]["truncated"] is True
    assert changed[1]["affected_rows"] == 1 and changed[1]["columns"] == []
    assert any(marker in q for q in mariadb.queries())
    assert mariadb.admin(f"SELECT note FROM app.{table} WHERE id = 2").strip() == "two"

    events = stack.events(after)
    calls = [e for e in events if e["type"] == "mcp.call"]
    assert [c["tool"] for c in calls] == ["query", "query", "query"]
    first = calls[0]
    assert first["actor"] == ACTOR and first["user"]["sub"] and first["mcp_client"]
    recorded = session_events(events, rows[1]["session_id"])
    assert recorded[0]["type"] == "session.start"
    assert [e["type"] for e in recorded if e["type"] in ("db.query", "db.result")] == [
        "db.query",
        "db.result",
    ]
    for event in recorded:
        assert event["mcp_call"] == {"seq": first["seq"], "id": first["id"]}
        assert event["actor"] == ACTOR and event["user"] == first["user"]


def test_describe_on_mysql_reads_information_schema_through_the_audited_path(
    stack: MysqlStack, env: dict[str, str], mariadb: MariadbServer, table: str
) -> None:
    after = stack.last_seq()
    sly = "app' OR '1'='1"

    async def work(session: ClientSession) -> Any:
        one = await call(session, "describe", connection="my", schema="app", table=table)
        none = await call(session, "describe", connection="my", schema=sly)
        whole = await call(session, "describe", connection="my")
        return one, none, whole

    one, none, whole = mcpclient.over_stdio(env, work)
    assert one[0] is False, one
    assert one[1]["tables"] == [
        {
            "schema": "app",
            "name": table,
            "columns": [
                {"name": "id", "type": "int(11)", "nullable": False},
                {"name": "note", "type": "varchar(80)", "nullable": True},
            ],
        }
    ]
    assert one[1]["truncated"] is False
    assert none == (False, {**none[1], "tables": []})  # the quote is a name, not SQL
    schemas = {t["schema"] for t in whole[1]["tables"]}
    assert "app" in schemas and not schemas & {"mysql", "information_schema", "sys"}
    queries = [e for e in stack.events(after) if e["type"] == "db.query"]
    assert len(queries) == 3 and all(q["actor"] == ACTOR for q in queries)
    assert all("information_schema.columns" in q["request"]["statement"] for q in queries)
    assert any("information_schema.columns" in q for q in mariadb.queries())


def test_refused_statement_and_wrong_tool_are_tool_errors_and_reach_nothing(
    stack: MysqlStack, env: dict[str, str], mariadb: MariadbServer, table: str
) -> None:
    async def work(session: ClientSession) -> Any:
        dropped = await call(session, "query", connection="my", sql=f"DROP TABLE {table}")
        params = await call(session, "query", connection="my", sql="SELECT ?", params=[1])
        wrong = await call(session, "query", connection="api", sql="SELECT 1")
        http_on_db = await call(session, "http_request", connection="my", method="GET", path="/get")
        still = await call(session, "query", connection="my", sql="SELECT 1 AS one")
        return dropped, params, wrong, http_on_db, still

    dropped, params, wrong, http_on_db, still = mcpclient.over_stdio(env, work)
    assert dropped[0] is True and "no-destructive" in dropped[1] and "1142" in dropped[1]
    assert params[0] is True and "params" in params[1]
    assert wrong == (True, "api is a http connection: use http_request")
    assert http_on_db == (True, "my is a mysql connection: use query")
    assert still[0] is False and still[1]["rows"] == [[1]]
    assert not [q for q in mariadb.queries() if table in q and "DROP" in q.upper()]
    assert mariadb.admin(f"SELECT COUNT(*) FROM app.{table}").strip() == "2"
    refused = [e for e in stack.queries() if f"DROP TABLE {table}" in e["request"]["statement"]]
    assert refused[-1]["decision"]["rule"] == "no-destructive" and refused[-1]["mcp_call"]


def test_http_request_reaches_httpbin_and_is_recorded(
    stack: MysqlStack, env: dict[str, str], http_targets: HttpTargets
) -> None:
    marker = uuid.uuid4().hex[:8]
    after = stack.last_seq()

    async def work(session: ClientSession) -> Any:
        got = await call(
            session,
            "http_request",
            connection="api",
            method="GET",
            path=f"/get?m={marker}",
            headers={"X-Marker": marker},
        )
        posted = await call(
            session,
            "http_request",
            connection="api",
            method="POST",
            path="/post",
            headers={"Content-Type": "application/json"},
            body=json.dumps({"m": marker}),
        )
        capped = await call(
            session, "http_request", connection="api", method="GET", path="/range/5000",
            max_bytes=100,
        )  # fmt: skip
        missing = await call(
            session, "http_request", connection="api", method="GET", path="/status/404"
        )
        return got, posted, capped, missing

    got, posted, capped, missing = mcpclient.over_stdio(env, work)
    assert got[0] is False, got
    assert got[1]["status"] == 200 and got[1]["truncated"] is False
    body = json.loads(got[1]["body"])
    assert body["args"] == {"m": marker} and body["headers"]["X-Marker"] == marker
    assert ["Content-Type", "application/json"] in [[k.title(), v] for k, v in got[1]["headers"]]
    assert json.loads(posted[1]["body"])["json"] == {"m": marker}
    assert capped[1]["status"] == 200 and capped[1]["truncated"] is True
    assert len(capped[1]["body"]) == 100
    assert missing[0] is False and missing[1]["status"] == 404  # an answer, not a tool error
    uris = [line.uri for line in http_targets.log_lines()]
    assert f"/get?m={marker}" in uris and "/post" in uris

    events = stack.events(after)
    calls = [e for e in events if e["type"] == "mcp.call"]
    assert [c["tool"] for c in calls] == ["http_request"] * 4
    sent = json.dumps({"m": marker}).encode()  # a body may carry secrets: its digest only
    assert calls[1]["arguments"]["body"] == {
        "bytes": len(sent),
        "sha256": hashlib.sha256(sent).hexdigest(),
    }
    recorded = session_events(events, got[1]["session_id"])
    request = next(e for e in recorded if e["type"] == "http.request")
    assert request["request"]["method"] == "GET" and request["request"]["path"] == "/get"
    for event in recorded:
        assert event["mcp_call"] == {"seq": calls[0]["seq"], "id": calls[0]["id"]}
        assert event["actor"] == ACTOR and event["user"] == calls[0]["user"]


def test_refused_http_request_is_a_tool_error_naming_the_rule_and_never_arrives(
    stack: MysqlStack, env: dict[str, str], http_targets: HttpTargets
) -> None:
    marker = uuid.uuid4().hex[:8]

    async def work(session: ClientSession) -> Any:
        denied = await call(
            session, "http_request", connection="api", method="DELETE", path=f"/delete?m={marker}"
        )
        bad = await call(session, "http_request", connection="api", method="GET", path="no-slash")
        still = await call(session, "http_request", connection="api", method="GET", path="/get")
        return denied, bad, still

    denied, bad, still = mcpclient.over_stdio(env, work)
    assert denied[0] is True and "api-rules" in denied[1] and "403" in denied[1]
    assert bad[0] is True and "path starts with /" in bad[1]
    assert still[0] is False and still[1]["status"] == 200
    mcpclient_seen = [line.uri for line in http_targets.log_lines()]
    assert not [uri for uri in mcpclient_seen if marker in uri]
    refused = [
        e
        for e in stack.events()
        if e["type"] == "http.request" and marker in (e["request"].get("query") or "")
    ]
    assert refused[-1]["decision"]["result"] == "deny" and refused[-1]["mcp_call"]["seq"]
    assert refused[-1]["actor"] == ACTOR


def test_the_remote_endpoint_runs_them_inside_the_control_plane(
    stack: MysqlStack, env: dict[str, str], mariadb: MariadbServer, http_targets: HttpTargets
) -> None:
    marker = uuid.uuid4().hex[:8]
    url = f"http://127.0.0.1:{stack.controlplane.http_port}/mcp"

    async def work(session: ClientSession) -> Any:
        queried = await call(session, "query", connection="my", sql=f"SELECT '{marker}' AS m")
        sent = await call(
            session, "http_request", connection="api", method="GET", path=f"/get?r={marker}"
        )
        return queried, sent

    queried, sent = mcpclient.over_http(url, env["GATEHOUSE_TOKEN"], work)
    assert queried[0] is False and queried[1]["rows"] == [[marker]], queried
    assert sent[0] is False and json.loads(sent[1]["body"])["args"] == {"r": marker}, sent
    assert any(marker in q for q in mariadb.queries())
    assert f"/get?r={marker}" in [line.uri for line in http_targets.log_lines()]


def test_rows_on_mysql_are_kept_up_to_the_byte_bound(
    stack: MysqlStack, env: dict[str, str]
) -> None:
    """As on PostgreSQL: 1 MB of rows under max_rows keeps MAX_RESULT_BYTES of them, in order,
    and the statement still completes (the rest are read and left out)."""
    many = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 10) "

    async def work(session: ClientSession) -> Any:
        return await call(
            session, "query", connection="my", sql=f"{many}SELECT i, REPEAT('x', 100000) FROM r"
        )

    error, queried = mcpclient.over_stdio(env, work)
    assert error is False, queried
    assert queried["truncated"] is True
    kept = [row[0] for row in queried["rows"]]
    assert kept == list(range(1, len(kept) + 1)) and len(kept) == MAX_RESULT_BYTES // 100_010

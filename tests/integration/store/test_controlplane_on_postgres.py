"""Smoke test: a real control plane whose store is PostgreSQL, with a real agent and the CLI.

`GATEHOUSE_DATABASE_URL` points the control plane at a fresh database of the throwaway cluster;
the same cluster also serves as the gateway's target. The trail must verify through the CLI and
be in PostgreSQL, not in a SQLite file in the data directory.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from devenv.postgres import PostgresServer
from devenv.stack import ControlPlane, enroll_agent, gatehouse
from tests.integration.store.conftest import TARGET_PASSWORD, TARGET_ROLE, Store, postgres_url
from trail.chain import verify_chain

pytestmark = pytest.mark.e2e

AGENT = "vpc-pg"
POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: {db}, user: {user}, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
"""


def test_controlplane_keeps_a_verifiable_trail_in_postgres(
    tmp_path: Path, pg_server: PostgresServer, pg_database: str
) -> None:
    store = Store("postgresql", postgres_url(pg_server, pg_database), pg_server, pg_database)
    data_dir = tmp_path / "controlplane"
    controlplane = ControlPlane.create(data_dir, env={"GATEHOUSE_DATABASE_URL": store.url})
    controlplane.start_and_wait()
    try:
        agent = enroll_agent(
            controlplane, AGENT, tmp_path / "agent", env={"PG_PASSWORD": TARGET_PASSWORD}
        )
        try:
            policy = tmp_path / "gatehouse.yaml"
            policy.write_text(
                POLICY.format(agent=AGENT, port=pg_server.port, db=TARGET_ROLE, user=TARGET_ROLE)
            )
            env = controlplane.cli_env
            applied = gatehouse(["admin", "apply", "-f", str(policy)], env=env)
            assert applied.returncode == 0, applied.stderr

            statement = f"select '{uuid.uuid4().hex[:12]}' as tag"
            executed = gatehouse(["exec", "pg", "-c", statement], env=env)
            assert executed.returncode == 0, executed.stderr
            verified = gatehouse(["audit", "verify"], env=env)
            assert verified.returncode == 0, verified.stderr
        finally:
            agent.stop()
    finally:
        controlplane.stop()

    assert not (data_dir / "gatehouse.db").exists()
    with store.admin() as admin:
        rows = admin.execute("SELECT seq, body, hash FROM audit_events ORDER BY seq").fetchall()
    triples = [(int(seq), str(body), str(hash_)) for seq, body, hash_ in rows]
    report = verify_chain(triples)
    assert report.broken is None and report.checked == len(triples)
    events = [json.loads(body) for _, body, _ in triples]
    queries = [e for e in events if e["type"] == "db.query"]
    assert [q["request"]["statement"] for q in queries] == [statement]
    session = [e["type"] for e in events if e.get("session_id") == queries[0]["session_id"]]
    assert session == ["session.start", "db.query", "db.result", "session.end"]
    assert {"agent.connect", "admin.change"} <= {e["type"] for e in events}

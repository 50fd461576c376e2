"""The policy store: each agent gets only its own part, and a new version is what it gets."""

from __future__ import annotations

from google.protobuf.json_format import MessageToDict

from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.policy.store import PolicyStore
from controlplane.store.database import Database

ADMIN = Identity(subject="token:admin", role="admin")


def policy(agents: int, *, port: int = 5432) -> str:
    lines = ["connections:"]
    for i in range(agents):
        for suffix, masked in (("a", "[pii]"), ("b", "[]")):
            lines += [
                f"  - name: pg-{i}-{suffix}",
                "    type: postgres",
                f"    agent: edge-{i}",
                f"    target: {{host: db, port: {port}, database: app, user: app}}",
                "    secret: {password: env:PG_PASSWORD}",
                f"    masking: {masked}",
            ]
    lines += ["masking:", "  - name: pii", "    columns: [email]", "    detectors: [email]"]
    return "\n".join(lines) + "\n"


async def test_each_agent_gets_its_own_connections_and_their_masking(
    db: Database, writer: AuditWriter
) -> None:
    store = PolicyStore(db, writer)
    applied = await store.apply(policy(3), "g.yaml", ADMIN)

    mine = store.for_agent("edge-1")
    assert mine.version == applied.version
    assert [c.name for c in mine.connections] == ["pg-1-a", "pg-1-b"]
    first, second = mine.connections
    assert first.target["port"] == 5432
    assert dict(first.secret) == {"password": "env:PG_PASSWORD"}
    assert [rule["name"] for rule in MessageToDict(first.masking)["rules"]] == ["pii"]
    assert MessageToDict(second.masking) == {"rules": []}
    assert list(store.for_agent("nobody").connections) == []
    assert store.connection("pg-2-b") is not None
    assert store.connection("pg-9-a") is None


async def test_a_new_version_replaces_what_agents_and_lookups_get(
    db: Database, writer: AuditWriter
) -> None:
    store = PolicyStore(db, writer)
    await store.apply(policy(2), "g.yaml", ADMIN)
    assert store.for_agent("edge-0").connections[0].target["port"] == 5432

    applied = await store.apply(policy(1, port=6432), "g.yaml", ADMIN)
    assert store.for_agent("edge-0").version == applied.version
    assert store.for_agent("edge-0").connections[0].target["port"] == 6432
    assert list(store.for_agent("edge-1").connections) == []
    assert store.connection("pg-1-a") is None

    # Another replica's store, started empty, loads the newest version (and only once).
    other = PolicyStore(db, writer)
    await other.load()
    assert other.version == applied.version
    document = other.document
    await other.load()
    assert other.document is document
    assert other.for_agent("edge-0").connections[0].target["port"] == 6432

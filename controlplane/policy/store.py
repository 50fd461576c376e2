"""The applied policy: versioned in the store, cached here, pushed to agents.

Each apply is kept whole (source and validated form) as a new version and recorded as an
`admin.change` event; agents receive only their own connections, with secret *references*
that they resolve locally.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from google.protobuf import struct_pb2
from sqlmodel import Session, col, select

from controlplane.audit.events import draft, utc_now
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.errors import InvalidArgument
from controlplane.policy.commands import CommandGuard
from controlplane.policy.document import (
    Connection,
    HttpConnection,
    MaskingRule,
    PolicyDocument,
    PolicyError,
    parse_policy,
    to_json,
)
from controlplane.policy.guardrails import SqlGuard
from controlplane.policy.mysql_guardrails import MysqlGuard
from controlplane.policy.requests import RequestGuard
from controlplane.store.database import Database
from controlplane.store.models import PolicyVersionRow
from gatehouse.v1 import agent_pb2
from redact.detectors import DetectorSet

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Applied:
    version: int
    changes: list[str]


class PolicyStore:
    def __init__(self, db: Database, audit: AuditWriter) -> None:
        self._db = db
        self._audit = audit
        self.version = 0
        self.document = PolicyDocument()
        self._guards: dict[tuple[int, str], SqlGuard] = {}
        self._mysql_guards: dict[tuple[int, str], MysqlGuard] = {}
        self._index = _Index(self.document)

    async def load(self) -> None:
        """Take the newest applied version (another replica may have applied it)."""

        def newest(session: Session) -> PolicyVersionRow | None:
            # Every agent connect asks: read the document only when the version moved.
            query = select(col(PolicyVersionRow.version)).order_by(
                col(PolicyVersionRow.version).desc()
            )
            version = session.exec(query.limit(1)).first()
            if version is None or version == self.version:
                return None
            return session.get(PolicyVersionRow, version)

        row = await self._db.read(newest)
        if row is not None and row.version != self.version:
            self.document = PolicyDocument.model_validate(json.loads(row.document))
            self.version = row.version or 0

    async def apply(self, source: str, filename: str, by: Identity) -> Applied:
        try:
            document = parse_policy(source, filename)
        except PolicyError as exc:
            raise InvalidArgument(str(exc)) from None
        for rule in document.guardrails:
            try:
                SqlGuard([rule])
            except ValueError as exc:
                raise InvalidArgument(f"{filename}: guardrail {rule.name!r}: {exc}") from None
        await self.load()
        changes = describe_changes(self.document, document)
        stored = json.dumps(to_json(document), sort_keys=True)

        def add(session: Session) -> int:
            row = PolicyVersionRow(
                document=stored, source=source, applied_by=by.subject, applied_at=utc_now()
            )
            session.add(row)
            session.flush()
            return row.version or 0

        version = await self._db.write(add)
        await self._audit.commit(
            draft(
                "admin.change",
                identity=by,
                change={
                    "action": "policy.apply",
                    "version": version,
                    "file": filename,
                    "sha256": hashlib.sha256(source.encode("utf-8")).hexdigest(),
                    "changes": changes,
                },
            )
        )
        self.document, self.version = document, version
        return Applied(version, changes)

    def connection(self, name: str) -> Connection | None:
        return self._indexed().connections.get(name)

    def _indexed(self) -> _Index:
        """The lookups of the current document, built once per document (a push to N agents
        asked for each agent's part by scanning all N connections: N² in all)."""
        if self._index.document is not self.document:
            self._index = _Index(self.document)
        return self._index

    def parameter_detectors(self, connection: Connection) -> DetectorSet:
        """Detectors for the values of statement parameters before they enter an event: the
        connection's masking detectors, and always `secret` (credentials are never logged)."""
        names = {"secret"}
        for name in connection.masking:
            rule = self.document.masking_rule(name)
            if rule is not None:
                names.update(rule.detectors)
        return DetectorSet(names)

    def guard(self, connection: Connection) -> SqlGuard:
        """The connection's SQL guardrails, built once per policy version (its cache stays warm
        across sessions: the same statements come back again and again)."""
        key = (self.version, connection.name)
        guard = self._guards.get(key)
        if guard is None:
            if self._guards and next(iter(self._guards))[0] != self.version:
                self._guards.clear()
            rules = [self.document.guardrail(n) for n in connection.guardrails]
            guard = self._guards[key] = SqlGuard([r for r in rules if r is not None])
        return guard

    def mysql_guard(self, connection: Connection) -> MysqlGuard:
        """The connection's SQL guardrails on MySQL's grammar, built once per policy version."""
        key = (self.version, connection.name)
        guard = self._mysql_guards.get(key)
        if guard is None:
            if self._mysql_guards and next(iter(self._mysql_guards))[0] != self.version:
                self._mysql_guards.clear()
            rules = [self.document.guardrail(n) for n in connection.guardrails]
            guard = self._mysql_guards[key] = MysqlGuard([r for r in rules if r is not None])
        return guard

    def command_guard(self, connection: Connection) -> CommandGuard:
        """The connection's command guardrails (ssh, shell): cheap to build, no cache."""
        rules = [self.document.guardrail(n) for n in connection.guardrails]
        return CommandGuard([r for r in rules if r is not None])

    def request_guard(self, connection: Connection) -> RequestGuard:
        """The connection's HTTP guardrails (requests and body patterns): cheap to build."""
        rules = [self.document.guardrail(n) for n in connection.guardrails]
        return RequestGuard([r for r in rules if r is not None])

    def for_agent(self, agent: str) -> agent_pb2.Policy:
        """The part of the policy one agent needs: its connections and their masking."""
        policy = agent_pb2.Policy(version=self.version)
        index = self._indexed()
        for conn in index.by_agent.get(agent, ()):
            target = struct_pb2.Struct()
            target.update(conn.target.model_dump(mode="json"))
            masking = struct_pb2.Struct()
            rules = index.masking
            masking.update(
                {"rules": [rules[n].model_dump(mode="json") for n in conn.masking if n in rules]}
            )
            policy.connections.append(
                agent_pb2.ConnectionSpec(
                    name=conn.name,
                    type=conn.type,
                    target=target,
                    secret=_flat_secret(conn),
                    masking=masking,
                )
            )
        return policy


def _flat_secret(conn: Connection) -> dict[str, str]:
    """A connection's secret references as the agent receives them (one flat map)."""
    if isinstance(conn, HttpConnection):
        return conn.secret.flat()
    return {k: str(v) for k, v in conn.secret.items()}


class _Index:
    """One document's connections by name and by agent, and its masking rules by name."""

    __slots__ = ("by_agent", "connections", "document", "masking")

    def __init__(self, document: PolicyDocument) -> None:
        self.document = document
        self.connections: dict[str, Connection] = {}
        self.by_agent: dict[str, list[Connection]] = {}
        for conn in document.connections:
            self.connections.setdefault(conn.name, conn)  # the first, as document.connection
            self.by_agent.setdefault(conn.agent, []).append(conn)
        self.masking: dict[str, MaskingRule] = {rule.name: rule for rule in document.masking}


def describe_changes(old: PolicyDocument, new: PolicyDocument) -> list[str]:
    """A short human summary: what an admin would want to read in the change event."""
    changes: list[str] = []
    for section in ("connections", "guardrails", "masking", "access"):
        before = {item.name: item for item in getattr(old, section)}
        after = {item.name: item for item in getattr(new, section)}
        kind = {"connections": "connection", "guardrails": "guardrail"}.get(section, section)
        kind = {"access": "access rule", "masking": "masking rule"}.get(kind, kind)
        changes += [f"{kind} {n} added" for n in sorted(after.keys() - before.keys())]
        changes += [f"{kind} {n} removed" for n in sorted(before.keys() - after.keys())]
        changes += [
            f"{kind} {n} changed"
            for n in sorted(after.keys() & before.keys())
            if after[n] != before[n]
        ]
    return changes or ["no change"]

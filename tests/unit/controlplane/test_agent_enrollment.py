"""Join tokens (uses, expiry, pin) and agent certificates: enrollment, renewal, revocation."""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import select

from agent import enrollment
from controlplane.agents.certificates import AgentCertificates, Issued
from controlplane.agents.registry import AgentRegistry
from controlplane.audit.events import draft
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import ADMIN, Identity
from controlplane.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from controlplane.store.database import Database
from controlplane.store.models import AgentInstanceRow, AgentRow, EventRow
from gatehouse.v1 import agent_pb2
from wire import jointoken

ROOT = Identity(subject="root", role=ADMIN)


class SmallCA:
    """A CA with the signing interface of controlplane.tls.ca, for the registry alone."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def sign_csr(self, csr_pem: bytes, common_name: str, lifetime: datetime.timedelta) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise InvalidArgument("bad CSR")
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)


class FakeContext:
    """What gRPC gives a servicer: the verified peer certificate in the auth context."""

    def __init__(self, pem: bytes | None) -> None:
        self.pem = pem
        self.aborted = ""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = details
        raise grpc.aio.AbortError(details)

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.pem]} if self.pem else {}

    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()


@pytest.fixture
def ca() -> SmallCA:
    return SmallCA()


@pytest.fixture
def registry(db: Database, writer: AuditWriter, ca: SmallCA) -> AgentRegistry:
    pin = jointoken.spki_pin(ca.cert)
    return AgentRegistry(db, writer, AgentCertificates(ca, datetime.timedelta(minutes=10), pin=pin))


def request(token: str, name: str = "edge") -> agent_pb2.EnrollRequest:
    key = enrollment.new_key()
    secret = jointoken.parse(token).secret
    return agent_pb2.EnrollRequest(
        join_token=secret,
        name=name,
        version="1.0",
        hostname="pod-1",
        csr=enrollment.csr_pem(key, name),
    )


async def events(db: Database, kind: str) -> list[dict[str, Any]]:
    rows = await db.read(lambda s: list(s.exec(select(EventRow).where(EventRow.type == kind))))
    return [json.loads(row.body) for row in rows]


def test_a_token_carries_the_pin_and_parses_back() -> None:
    secret = "ghj_" + "A" * 43
    pin = "sha256:" + "ab" * 32
    text = jointoken.format_token(secret, pin)
    assert text == f"{secret}.{'ab' * 32}"
    assert jointoken.parse(text) == jointoken.JoinToken(secret, pin)
    assert jointoken.parse(secret) == jointoken.JoinToken(secret, None)
    with pytest.raises(jointoken.BadJoinToken, match="CA pin, 64 hex digits"):
        jointoken.parse(text[:-3])
    with pytest.raises(jointoken.BadJoinToken, match="not a join token"):
        jointoken.parse("gha_" + "A" * 43)


async def test_a_pinned_token_enrolls_with_a_certificate_for_the_agents_own_key(
    registry: AgentRegistry, ca: SmallCA, db: Database, writer: AuditWriter
) -> None:
    created = await registry.create("edge", ROOT)
    assert created.pin == jointoken.spki_pin(ca.cert)
    assert jointoken.parse(created.join_token).pin == created.pin
    enrolled = await registry.enroll(request(created.join_token), "ipv4:10.0.0.7:5555")
    assert enrolled.credential is None and enrolled.certificate is not None
    cert = x509.load_pem_x509_certificate(enrolled.certificate.pem)
    assert cert.subject.rfc4514_string() == "CN=edge"
    cert.verify_directly_issued_by(ca.cert)
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert lifetime <= datetime.timedelta(minutes=10)

    row = await registry.authenticate(FakeContext(enrolled.certificate.pem))
    assert row.name == "edge"
    (event,) = await events(db, "agent.enroll")
    assert event["agent"]["hostname"] == "pod-1"
    assert event["agent"]["peer"] == "ipv4:10.0.0.7:5555"
    assert event["certificate"]["serial"] == enrolled.certificate.serial


async def test_used_up_and_expired_tokens_are_refused_with_the_reason(
    registry: AgentRegistry,
) -> None:
    once = await registry.create("edge", ROOT)
    await registry.enroll(request(once.join_token), "ipv4:127.0.0.1:1")
    with pytest.raises(PermissionDenied, match=r"already used .* no uses left"):
        await registry.enroll(request(once.join_token), "ipv4:127.0.0.1:2")

    brief = await registry.create("short", ROOT, ttl=datetime.timedelta(seconds=1))
    brief_row_expiry = brief.expires
    assert brief_row_expiry > datetime.datetime.now(datetime.UTC)

    await asyncio.sleep(1.2)
    with pytest.raises(PermissionDenied, match="this join token expired at"):
        await registry.enroll(request(brief.join_token, "short"), "ipv4:127.0.0.1:3")


async def test_each_use_of_a_token_enrolls_an_instance_of_its_own_and_one_can_be_revoked(
    registry: AgentRegistry, db: Database, writer: AuditWriter
) -> None:
    created = await registry.create("pod", ROOT, uses=3, ttl=datetime.timedelta(hours=24))
    first = await registry.enroll(request(created.join_token, "pod"), "ipv4:127.0.0.1:1")
    second = await registry.enroll(request(created.join_token, "pod"), "ipv4:127.0.0.1:2")
    assert first.certificate and second.certificate
    assert first.certificate.serial != second.certificate.serial
    assert first.instance_id != second.instance_id and first.agent_id == second.agent_id
    # A pool: the earlier instance keeps its certificate.
    one = await registry.authenticate(FakeContext(first.certificate.pem))
    two = await registry.authenticate(FakeContext(second.certificate.pem))
    assert (one.name, one.id, two.name, two.id) == (
        "pod",
        first.instance_id,
        "pod",
        second.instance_id,
    )
    await registry.enroll(request(created.join_token, "pod"), "ipv4:127.0.0.1:3")
    with pytest.raises(PermissionDenied, match="no uses left"):
        await registry.enroll(request(created.join_token, "pod"), "ipv4:127.0.0.1:4")
    enrolls = await events(db, "agent.enroll")
    assert [e["join"]["uses_left"] for e in enrolls] == [2, 1, 0]
    assert enrolls[0]["agent"]["instance"] == first.instance_id

    assert await registry.revoke("pod", ROOT, first.instance_id) == [first.instance_id]
    with pytest.raises(Unauthenticated, match="revoked"):
        await registry.authenticate(FakeContext(first.certificate.pem))
    assert (await registry.authenticate(FakeContext(second.certificate.pem))).id == two.id
    listed = {s.instance_id: s.status for s in await registry.statuses()}
    assert listed[first.instance_id] == "revoked"
    assert listed[second.instance_id] == "offline"
    (change,) = [e for e in await events(db, "admin.change") if "instance" in e["change"]]
    assert change["change"] == {
        "action": "agent.revoke",
        "agent": "pod",
        "instance": first.instance_id,
    }
    with pytest.raises(NotFound, match="no instance 'nope'"):
        await registry.revoke("pod", ROOT, "nope")


async def enrolled_edge(registry: AgentRegistry) -> tuple[Issued, FakeContext]:
    """Agent `edge`, enrolled with a one-use token: its certificate, and a call carrying it."""
    created = await registry.create("edge", ROOT)
    enrolled = await registry.enroll(request(created.join_token), "ipv4:127.0.0.1:1")
    assert enrolled.certificate is not None
    return enrolled.certificate, FakeContext(enrolled.certificate.pem)


async def test_renewal_keeps_the_old_certificate_for_sessions_and_revocation_ends_both(
    registry: AgentRegistry,
) -> None:
    certificate, old = await enrolled_edge(registry)
    row = await registry.authenticate(old)
    renewed = await registry.renew(
        row, enrollment.csr_pem(enrollment.new_key(), "edge"), "ipv4:127.0.0.1:1"
    )
    assert renewed.serial != certificate.serial
    assert (await registry.authenticate(FakeContext(renewed.pem))).cert_serial == renewed.serial
    assert (await registry.authenticate(old)).name == "edge"  # open sessions keep working

    await registry.revoke("edge", ROOT)
    for context in (old, FakeContext(renewed.pem)):
        with pytest.raises(Unauthenticated, match="revoked"):
            await registry.authenticate(context)


async def test_a_call_without_a_client_certificate_is_refused(registry: AgentRegistry) -> None:
    with pytest.raises(Unauthenticated, match="carried none"):
        await registry.authenticate(FakeContext(None))


async def test_production_enrollment_needs_a_csr_and_a_bad_csr_spends_no_use(
    registry: AgentRegistry, db: Database
) -> None:
    created = await registry.create("edge", ROOT)
    secret = jointoken.parse(created.join_token).secret
    bare = agent_pb2.EnrollRequest(join_token=secret, name="edge")
    with pytest.raises(InvalidArgument, match="certificate request"):
        await registry.enroll(bare, "ipv4:127.0.0.1:1")
    bad = agent_pb2.EnrollRequest(join_token=secret, name="edge", csr=b"not a csr")
    with pytest.raises(ValueError):
        await registry.enroll(bad, "ipv4:127.0.0.1:1")
    row = await db.read(lambda s: s.exec(select(AgentRow)).one())
    assert row.join_uses_left == 1
    with pytest.raises(PermissionDenied, match="not 'other'"):
        await registry.enroll(request(created.join_token, "other"), "ipv4:127.0.0.1:1")


async def test_limits_on_uses_and_ttl_are_explicit(registry: AgentRegistry) -> None:
    with pytest.raises(InvalidArgument, match="--uses"):
        await registry.create("edge", ROOT, uses=0)
    with pytest.raises(InvalidArgument, match="--ttl"):
        await registry.create("edge", ROOT, ttl=datetime.timedelta(days=31))


async def test_a_delegated_admin_token_cannot_enroll_agents(
    registry: AgentRegistry, db: Database
) -> None:
    """A join token (and the agents it enrolls) is never re-checked against a person: minted
    with a delegated token, it would outlive the delegation, as a machine token would."""
    devin = Identity(subject="alice", role=ADMIN, actor="devin", token_id="t1")
    with pytest.raises(PermissionDenied, match="delegated token"):
        await registry.create("edge", devin)
    assert await db.read(lambda s: s.exec(select(AgentRow)).first()) is None


async def test_dev_mode_keeps_bearer_credentials(db: Database, writer: AuditWriter) -> None:
    registry = AgentRegistry(db, writer)
    created = await registry.create("edge", ROOT)
    assert created.pin is None and "." not in created.join_token
    enrolled = await registry.enroll(
        agent_pb2.EnrollRequest(join_token=created.join_token, name="edge"), "ipv4:127.0.0.1:1"
    )
    assert enrolled.credential and enrolled.credential.startswith("gha_")


def refuse_events(db_path: Path, kind: str | None) -> None:
    """The store refuses events of `kind` (a full disk, a broken store), or (None) takes them."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        if kind is None:
            conn.execute("DROP TRIGGER refuse_kind")
        else:
            conn.execute(
                "CREATE TRIGGER refuse_kind BEFORE INSERT ON audit_events "
                f"WHEN new.type = '{kind}' BEGIN SELECT RAISE(ABORT, 'audit disk is full'); END"
            )
    finally:
        conn.close()


async def test_an_enrollment_that_cannot_be_recorded_grants_nothing(
    registry: AgentRegistry, db: Database, db_path: Path
) -> None:
    """Fail closed: no certificate, no instance, no use spent, the row as it was; then it
    works."""
    created = await registry.create("edge", ROOT)
    before = await db.read(lambda s: s.exec(select(AgentRow)).one())
    refuse_events(db_path, "agent.enroll")
    with pytest.raises(Unavailable, match="could not be recorded in the audit trail"):
        await registry.enroll(request(created.join_token), "ipv4:127.0.0.1:1")
    after = await db.read(lambda s: s.exec(select(AgentRow)).one())
    assert after.join_uses_left == 1 and after.enrolled_at is None
    assert after.model_dump() == before.model_dump()
    assert await db.read(lambda s: list(s.exec(select(AgentInstanceRow)))) == []
    assert await events(db, "agent.enroll") == []

    refuse_events(db_path, None)
    enrolled = await registry.enroll(request(created.join_token), "ipv4:127.0.0.1:1")
    assert enrolled.certificate is not None
    (event,) = await events(db, "agent.enroll")
    assert event["certificate"]["serial"] == enrolled.certificate.serial
    assert event["agent"]["instance"] == enrolled.instance_id
    assert event["join"]["uses_left"] == 0


async def test_an_agent_whose_creation_cannot_be_recorded_gets_no_join_token(
    registry: AgentRegistry, db: Database, db_path: Path
) -> None:
    """The join token and its admin.change are one transaction: no event, no token; and a
    revoked agent being re-created stays as it was (revoked, its instances listed)."""
    refuse_events(db_path, "admin.change")
    with pytest.raises(Unavailable, match="creation could not be recorded in the audit trail"):
        await registry.create("edge", ROOT)
    assert await db.read(lambda s: list(s.exec(select(AgentRow)))) == []

    refuse_events(db_path, None)
    created = await registry.create("edge", ROOT)
    enrolled = await registry.enroll(request(created.join_token), "ipv4:127.0.0.1:1")
    await registry.revoke("edge", ROOT)
    before = await db.read(lambda s: s.exec(select(AgentRow)).one())
    refuse_events(db_path, "admin.change")
    with pytest.raises(Unavailable, match="no join token was issued"):
        await registry.create("edge", ROOT)
    after = await db.read(lambda s: s.exec(select(AgentRow)).one())
    assert after.model_dump() == before.model_dump() and after.revoked_at is not None
    (instance,) = await db.read(lambda s: list(s.exec(select(AgentInstanceRow))))
    assert instance.id == enrolled.instance_id
    changes = [e["change"]["action"] for e in await events(db, "admin.change")]
    assert changes == ["agent.create", "agent.revoke"]  # each recorded one happened

    refuse_events(db_path, None)
    again = await registry.create("edge", ROOT)
    assert await registry.enroll(request(again.join_token), "ipv4:127.0.0.1:2")


async def test_a_renewal_that_cannot_be_recorded_keeps_the_old_certificate_only(
    registry: AgentRegistry, db: Database, db_path: Path
) -> None:
    certificate, current = await enrolled_edge(registry)
    row = await registry.authenticate(current)
    refuse_events(db_path, "agent.renew")
    with pytest.raises(Unavailable, match="renewal could not be recorded"):
        await registry.renew(row, enrollment.csr_pem(enrollment.new_key(), "edge"), "p")
    stored = await db.read(lambda s: s.exec(select(AgentInstanceRow)).one())
    assert stored.cert_serial == certificate.serial  # the old one, nothing else
    assert stored.prev_cert_fingerprint is None
    assert await events(db, "agent.renew") == []
    assert (await registry.authenticate(current)).name == "edge"


async def test_a_refused_renewal_is_a_failed_authentication(
    db: Database, writer: AuditWriter, tmp_path: Path
) -> None:
    """Renew refuses a bad certificate request, a missing or an unknown certificate: each is
    an auth.fail with the reason, like any refused credential."""
    from controlplane.agents.service import AgentServicer
    from controlplane.auth.failures import AuthFailures
    from controlplane.policy.store import PolicyStore
    from controlplane.tls.ca import CertificateAuthority

    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    lifetime = datetime.timedelta(minutes=10)
    registry = AgentRegistry(db, writer, AgentCertificates(ca, lifetime, pin=ca.pin))
    servicer = AgentServicer(registry, cast(PolicyStore, None), failures=AuthFailures(writer))
    _, current = await enrolled_edge(registry)
    good_csr = enrollment.csr_pem(enrollment.new_key(), "edge")
    calls = [
        (current, b"not a csr", "is not a PEM CSR"),
        (FakeContext(None), good_csr, "carried none"),
        (FakeContext(SmallCA().cert_pem), good_csr, "unknown, replaced or revoked"),
    ]
    for context, csr, why in calls:
        with pytest.raises(grpc.aio.AbortError):
            await AgentServicer.Renew(servicer, agent_pb2.RenewRequest(csr=csr), context)
        assert why in context.aborted
    await writer.commit_all([])
    await writer.commit(draft("test.marker"))
    failed = await events(db, "auth.fail")
    assert [e["credential"] for e in failed] == ["agent_certificate"] * 3
    assert [e["reason"] for e in failed] == [c.aborted for c, _, _ in calls]
    assert await events(db, "agent.renew") == []


@pytest.mark.parametrize("kind", ["agent.enroll", "agent.renew"])
def test_enrollment_and_renewal_events_map_to_valid_ocsf(kind: str) -> None:
    from controlplane.audit.events import draft
    from controlplane.audit.ocsf import to_ocsf
    from tests.unit.controlplane.test_ocsf import Trail, agent_info, assert_valid

    event = Trail().add(
        draft(
            kind,
            agent={**agent_info(), "address": "10.0.3.4"},
            join={"uses_left": 2},
            certificate={"serial": "ab12", "not_after": "2026-12-05T00:00:00Z"},
        )
    )
    ocsf = to_ocsf(event)
    assert_valid(ocsf)
    assert (ocsf["class_uid"], ocsf["activity_id"]) == (4001, 99)
    assert ocsf["src_endpoint"]["ip"] == "10.0.3.4"

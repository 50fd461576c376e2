"""The control plane's tables. `audit_events` is append-only; only a prune drops a prefix."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, LargeBinary
from sqlmodel import Field, SQLModel


class AgentRow(SQLModel, table=True):
    """An agent name: its join token and whether it is revoked. The processes enrolled under
    it are its instances (`AgentInstanceRow`), each with its own credential (ADR 0024)."""

    __tablename__ = "agents"

    id: str = Field(primary_key=True)
    name: str = Field(unique=True, index=True)
    join_token_hash: str | None = Field(default=None, unique=True)
    created_at: datetime
    enrolled_at: datetime | None = None  # the newest enrollment of any instance
    revoked_at: datetime | None = None
    # A join token works this many more times, until it expires (None: never, for tokens
    # made before expiry existed). Each use enrolls one more instance.
    join_uses_left: int = 0
    join_expires_at: datetime | None = None


class AgentInstanceRow(SQLModel, table=True):
    """One agent process enrolled under a name with one use of its join token. Secrets are kept
    only as SHA-256 hashes; `replica` names the control-plane replica holding its control
    stream (None: offline), so every replica can route a session to it."""

    __tablename__ = "agent_instances"

    id: str = Field(primary_key=True)  # the instance id
    agent_id: str = Field(index=True)
    name: str = Field(index=True)
    hostname: str = ""
    version: str = ""
    enrolled_at: datetime
    last_seen: datetime | None = None
    revoked_at: datetime | None = None
    credential_hash: str | None = Field(default=None, unique=True)  # --dev: bearer credential
    # Production mode: SHA-256 of the instance's current client certificate (DER), and of the
    # one it renewed from, which still opens sessions until it expires.
    cert_fingerprint: str | None = Field(default=None, unique=True, index=True)
    cert_serial: str | None = None
    cert_not_after: datetime | None = None
    prev_cert_fingerprint: str | None = Field(default=None, unique=True, index=True)
    prev_cert_not_after: datetime | None = None
    replica: str | None = Field(default=None, index=True)
    connected_at: datetime | None = None


class ReplicaRow(SQLModel, table=True):
    """A control-plane process serving this store: where agents dial its session streams, and
    when it last said it is alive (a replica killed with -9 stops saying so)."""

    __tablename__ = "replicas"

    id: str = Field(primary_key=True)
    advertise: str  # host:port agents dial for sessions of this replica's clients
    hostname: str = ""
    started_at: datetime
    seen_at: datetime
    stopped_at: datetime | None = None


class ApiTokenRow(SQLModel, table=True):
    """A bearer token for people and automation, stored as its hash."""

    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True)
    token_hash: str = Field(unique=True)
    subject: str
    email: str | None = None
    groups: str = "[]"  # JSON list
    actor: str | None = None
    role: str = "user"
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    # Delegated tokens: the connection globs they are limited to (JSON list; None: no limit
    # beyond the person's access rules), and the person who made them (their subject).
    connections: str | None = None
    created_by: str | None = Field(default=None, index=True)
    # A delegated token made with a stored token (not an OIDC login): that token's id. The
    # delegated token works only while it does, and never with more than its groups and role.
    delegated_from: str | None = None


class PersonRow(SQLModel, table=True):
    """What the identity provider last said about a person: the groups of their newest login.

    OIDC people are known only from their tokens, so this is the control plane's view of
    their current identity; delegated tokens are re-checked against it on every use.
    """

    __tablename__ = "people"

    subject: str = Field(primary_key=True)
    email: str | None = None
    groups: str = "[]"  # JSON list, from the newest token seen
    issued_at: datetime  # that token's iat: an older token never overwrites a newer one
    last_seen_at: datetime  # the last time the person authenticated themselves


class PolicyVersionRow(SQLModel, table=True):
    """Every applied policy file, kept whole so that any past decision can be explained."""

    __tablename__ = "policy_versions"

    version: int | None = Field(default=None, primary_key=True)
    document: str  # validated policy as JSON
    source: str  # the YAML as applied
    applied_by: str
    applied_at: datetime


class SessionRow(SQLModel, table=True):
    """One session through the gateway; its events carry the same id."""

    __tablename__ = "sessions"

    id: str = Field(primary_key=True)
    connection: str = Field(index=True)
    connection_type: str
    agent: str
    mode: str
    subject: str = Field(index=True)
    actor: str | None = None
    source_ip: str = ""
    client: str = ""
    started_at: datetime = Field(index=True)
    ended_at: datetime | None = None
    end_reason: str | None = None
    # The result event whose `recording.sha256` vouches for this session's terminal recording.
    recording_seq: int | None = Field(default=None, sa_type=BigInteger)


class RecordingChunkRow(SQLModel, table=True):
    """A piece of a session's terminal recording (asciicast v2), in order. The recording is
    trusted only as far as its digest in the hash chain: replay checks it before playing."""

    __tablename__ = "recording_chunks"

    session_id: str = Field(primary_key=True)
    idx: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    data: bytes = Field(sa_type=LargeBinary)


class EventRow(SQLModel, table=True):
    """One audit event. `body` is the canonical JSON that `hash` covers."""

    __tablename__ = "audit_events"

    seq: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    id: str = Field(unique=True)
    time: datetime
    type: str = Field(index=True)
    session_id: str | None = Field(default=None, index=True)
    body: str
    hash: str


class ChainHeadRow(SQLModel, table=True):
    """The single row that serialises appends: last seq and hash, locked by each writer.

    Assigning seq from this locked row inside the committing transaction makes seq dense and
    commit-ordered, also with several control-plane replicas on PostgreSQL.
    """

    __tablename__ = "audit_chain_head"

    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = Field(sa_type=BigInteger)
    hash: str


class AnchorRow(SQLModel, table=True):
    """Where the stored chain starts after a prune: the last removed event's seq and hash,
    signed so that a verifier can trust the start of what remains (docs/decisions/0005).

    One row per prune; the newest is the current start. Append-only, like the events.
    """

    __tablename__ = "audit_anchor"

    seq: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    hash: str
    key_id: str
    signature: str  # base64 Ed25519 over "gatehouse-audit-anchor/v1\n<seq>\n<hash>\n"
    first_seq: int = Field(sa_type=BigInteger)  # first event this prune removed
    removed: int = Field(sa_type=BigInteger)
    pruned_at: datetime
    pruned_by: str


class PruneGuardRow(SQLModel, table=True):
    """SQLite's narrow exception to the append-only trigger: a row that exists only inside
    the prune transaction and lets it delete events with seq <= `through_seq`, nothing else.

    The prune removes it again before it appends its `audit.prune` event, and a trigger
    refuses every insert into `audit_events` while a guard row exists, so a guard can never be
    committed without stopping the whole trail (PostgreSQL uses `SET LOCAL` instead).
    """

    __tablename__ = "audit_prune_guard"

    through_seq: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )


class ReviewRow(SQLModel, table=True):
    """A just-in-time access request that an access rule's reviewers approve or deny.

    `status`: pending → approved | denied | expired (nobody decided in time) | cancelled (the
    requester stopped waiting). An approval lets the requester open `connection` in `mode`
    without a new review until `grant_until`.
    """

    __tablename__ = "reviews"

    id: str = Field(primary_key=True)
    requester: str = Field(index=True)  # subject
    requester_email: str | None = None
    requester_groups: str = "[]"  # JSON list
    actor: str | None = None
    connection: str
    mode: str
    rule: str
    reviewer_groups: str = "[]"  # JSON list
    ttl_seconds: int
    status: str = Field(default="pending", index=True)
    created_at: datetime
    expires_at: datetime  # the end of the wait for a decision
    decided_by: str | None = None  # subject
    decided_by_email: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    grant_until: datetime | None = None

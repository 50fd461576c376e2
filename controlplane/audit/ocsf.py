"""Exported audit events as OCSF 1.8.0 events, for SIEMs that ingest OCSF (DESIGN §5, export).

`to_ocsf` maps one exported event (the JSON object with seq, hash, …) to one OCSF event of the
class that fits its type; `docs/ocsf.md` has the table and the reasons. It is a pure function
(no I/O, no clock, no state) because the export runs it once per event, and it never raises on
an event it does not understand: an unknown type still becomes a valid event, and whatever OCSF
has no attribute for is kept, under its own name, in `unmapped`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

JSON = dict[str, Any]

OCSF_VERSION: Final = "1.8.0"
# Every event declares these in metadata.profiles: `host` lets the network classes carry
# `actor`; `security_control` carries the gateway's decisions (action, disposition, policy).
PROFILES: Final = ("host", "security_control")
PRODUCT_NAME: Final = "Gatehouse"
PRODUCT_VERSION: Final = "0.1.0"

DATASTORE: Final = 6005
SSH: Final = 4007
PROCESS: Final = 1007
HTTP: Final = 4002
NETWORK: Final = 4001
AUTHENTICATION: Final = 3002
USER_ACCESS: Final = 3005
API: Final = 6003
OTHER: Final = 99  # OCSF's "Other" for any enum; as an activity, activity_name is our type

_CLASS_NAMES: Final[Mapping[int, str]] = {
    DATASTORE: "Datastore Activity",
    SSH: "SSH Activity",
    PROCESS: "Process Activity",
    HTTP: "HTTP Activity",
    NETWORK: "Network Activity",
    AUTHENTICATION: "Authentication",
    USER_ACCESS: "User Access Management",
    API: "API Activity",
}
_CATEGORY_NAMES: Final[Mapping[int, str]] = {
    1: "System Activity",
    3: "Identity & Access Management",
    4: "Network Activity",
    6: "Application Activity",
}
# The captions of the activities used here, per class, as OCSF 1.8.0 spells them.
_ACTIVITY_NAMES: Final[Mapping[int, Mapping[int, str]]] = {
    DATASTORE: {3: "Connect", 4: "Query", OTHER: "Other"},
    SSH: {1: "Open", 2: "Close", OTHER: "Other"},
    PROCESS: {1: "Launch", 2: "Terminate", OTHER: "Other"},
    HTTP: {
        1: "Connect",
        2: "Delete",
        3: "Get",
        4: "Head",
        5: "Options",
        6: "Post",
        7: "Put",
        8: "Trace",
        9: "Patch",
        OTHER: "Other",
    },
    NETWORK: {1: "Open", 2: "Close", OTHER: "Other"},
    AUTHENTICATION: {1: "Logon", OTHER: "Other"},
    USER_ACCESS: {1: "Assign Privileges", OTHER: "Other"},
    API: {1: "Create", 2: "Read", 3: "Update", 4: "Delete", OTHER: "Other"},
}
_HTTP_METHODS: Final[Mapping[str, int]] = {
    name.upper(): uid for uid, name in _ACTIVITY_NAMES[HTTP].items() if uid != OTHER
}
# Connection types whose sessions are database sessions, with OCSF's database type_id.
_DATABASE_TYPES: Final[Mapping[str, int]] = {"postgres": 1, "mysql": 1}
_DATABASE_TYPE_NAMES: Final[Mapping[int, str]] = {0: "Unknown", 1: "Relational"}
# admin.change actions end in a verb; API Activity knows four of them.
_API_VERBS: Final[Mapping[str, int]] = {
    "create": 1,
    "add": 1,
    "read": 2,
    "list": 2,
    "apply": 3,
    "update": 3,
    "set": 3,
    "rotate": 3,
    "delete": 4,
    "remove": 4,
    "revoke": 4,
}

INFORMATIONAL, LOW, MEDIUM = 1, 2, 3
_SEVERITY_NAMES: Final[Mapping[int, str]] = {1: "Informational", 2: "Low", 3: "Medium"}
UNKNOWN, SUCCESS, FAILURE = 0, 1, 2
_STATUS_NAMES: Final[Mapping[int, str]] = {0: "Unknown", 1: "Success", 2: "Failure"}
ALLOWED, DENIED = 1, 2
_ACTION_NAMES: Final[Mapping[int, str]] = {1: "Allowed", 2: "Denied"}
BLOCKED, APPROVED, REJECTED, UNAUTHORIZED = 2, 8, 25, 26
_DISPOSITION_NAMES: Final[Mapping[int, str]] = {
    1: "Allowed",
    2: "Blocked",
    8: "Approved",
    25: "Rejected",
    26: "Unauthorized",
}
_COMMAND_LINE: Final = 13  # observable type_id
_REMOTE_ACCESS: Final = 9  # agent type_id

# OCSF's own email_t pattern: an address it would reject goes to user.name instead.
_EMAIL: Final = re.compile(r"^[a-zA-Z0-9!#$%&'*+-/=?^_`{|}~.]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_UNKNOWN: Final = "unknown"
_ALWAYS_UNMAPPED: Final = ("prev_hash", "hash")


def to_ocsf(event: Mapping[str, Any], *, include_raw: bool = False) -> dict[str, Any]:
    """Map one exported Gatehouse event to one OCSF 1.8.0 event (a new, JSON-ready dict).

    `include_raw` also puts the whole event, as JSON, in `raw_data`: with it a verifier can
    recompute `unmapped.hash` from the OCSF record alone, without the native export.
    """
    reader = _Reader(event)
    kind = reader.text("type") or _UNKNOWN
    mapped = _map(reader, kind)
    class_uid, activity_id = mapped.class_uid, mapped.activity_id
    caption = _ACTIVITY_NAMES[class_uid][activity_id]
    category_uid = class_uid // 1000
    ocsf: JSON = {
        "class_uid": class_uid,
        "class_name": _CLASS_NAMES[class_uid],
        "category_uid": category_uid,
        "category_name": _CATEGORY_NAMES[category_uid],
        "activity_id": activity_id,
        "activity_name": kind if activity_id == OTHER else caption,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{_CLASS_NAMES[class_uid]}: {caption}",
        "time": _time(reader),
        "metadata": _metadata(reader, kind),
    }
    actor = _actor(reader)
    if actor is not None:
        ocsf["actor"] = actor
    elif class_uid in (DATASTORE, PROCESS, API):  # the schema requires an actor there
        ocsf["actor"] = {"invoked_by": PRODUCT_NAME}
    if class_uid != PROCESS:  # the one class here without src_endpoint
        source = _source_endpoint(reader)
        if source is not None:
            ocsf["src_endpoint"] = source
    ocsf.update(mapped.fields)
    ocsf.update(_outcome(reader, kind).fields())
    if "src_endpoint" not in ocsf and (
        class_uid in (DATASTORE, API)
        or (class_uid in (SSH, NETWORK) and "dst_endpoint" not in ocsf)
    ):
        ocsf["src_endpoint"] = {"name": _UNKNOWN}  # required (or one of src/dst) there
    unmapped = reader.unmapped()
    if unmapped:
        ocsf["unmapped"] = unmapped
    if include_raw:
        raw = json.dumps(dict(event), ensure_ascii=False, separators=(",", ":"), default=str)
        ocsf["raw_data"] = raw
        ocsf["raw_data_size"] = len(raw.encode("utf-8"))
    return ocsf


def _map(reader: _Reader, kind: str) -> _Mapped:
    """A known type by its mapper; a new type of a known family (`db.cancel`) in that family's
    class as activity Other; anything else as API Activity, Other."""
    mapper = _MAPPERS.get(kind)
    if mapper is not None:
        return mapper(reader, kind)
    mapped = _FAMILIES.get(kind.partition(".")[0], _other)(reader, kind)
    mapped.activity_id = OTHER
    return mapped


# ---- reading our event -------------------------------------------------------------------


class _Reader:
    """Reads our event and remembers what it placed, so that the rest lands in `unmapped`.

    `peek` reads without claiming; `claim` marks a field (or one member of an object field)
    as placed in an OCSF attribute. Only what was claimed is left out of `unmapped`.
    """

    __slots__ = ("event", "used")

    def __init__(self, event: Mapping[str, Any]) -> None:
        self.event = event
        self.used: dict[str, set[str] | None] = {}

    def peek(self, key: str, member: str | None = None) -> Any:
        value = self.event.get(key)
        if member is None:
            return value
        return value.get(member) if isinstance(value, Mapping) else None

    def claim(self, key: str, member: str | None = None) -> None:
        if member is None:
            self.used[key] = None
            return
        used = self.used.setdefault(key, set())
        if used is not None:
            used.add(member)

    def text(self, key: str, member: str | None = None) -> str | None:
        """A non-empty string, claimed."""
        value = _text(self.peek(key, member))
        if value is not None:
            self.claim(key, member)
        return value

    def integer(self, key: str, member: str | None = None) -> int | None:
        """An integer (not a bool), claimed."""
        value = _integer(self.peek(key, member))
        if value is not None:
            self.claim(key, member)
        return value

    def unmapped(self) -> JSON:
        """The hashes, and every field or member of a field that no attribute took."""
        out: JSON = {}
        for key, value in self.event.items():
            if key in _ALWAYS_UNMAPPED or key not in self.used:
                out[key] = value
                continue
            used = self.used[key]
            if used is not None and isinstance(value, Mapping):
                rest = {k: v for k, v in value.items() if k not in used}
                if rest:
                    out[key] = rest
        return out


def _obj(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(reader: _Reader) -> int:
    """RFC 3339 (as events.rfc3339 writes it) to epoch milliseconds, exactly; 0 if absent."""
    value = _text(reader.peek("time"))
    if value is None:
        return 0
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    reader.claim("time")
    return (moment - _EPOCH) // _MS


def _ip(value: object) -> str | None:
    """An address OCSF's ip_t accepts, or None."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None
    return value


def _duration(reader: _Reader, key: str, member: str | None = None) -> JSON:
    """`duration` in whole milliseconds, as OCSF has it (ours are fractional)."""
    value = reader.peek(key, member)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return {}
    if not math.isfinite(value) or value < 0:
        return {}
    reader.claim(key, member)
    return {"duration": round(value)}


def _command_line(request: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(command line, program, member it came from) from `command` text or an `argv` list."""
    command = _text(request.get("command"))
    if command is not None:
        words = command.split(maxsplit=1)
        return command, words[0] if words else command, "command"
    argv = request.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(a, str) and a for a in argv):
        return shlex.join(argv), argv[0], "argv"
    return None


# ---- the parts every class shares --------------------------------------------------------


def _metadata(reader: _Reader, kind: str) -> JSON:
    metadata: JSON = {
        "version": OCSF_VERSION,
        "product": {
            "name": PRODUCT_NAME,
            "vendor_name": PRODUCT_NAME,
            "version": PRODUCT_VERSION,
        },
        "profiles": list(PROFILES),
        "log_name": "audit",
        "event_code": kind,
    }
    uid = reader.text("id")
    if uid is not None:
        metadata["uid"] = uid
    seq = reader.integer("seq")
    if seq is not None:
        metadata["sequence"] = seq
    session_id = reader.text("session_id")
    if session_id is not None:
        metadata["correlation_uid"] = session_id
    original = _text(reader.peek("time"))
    if original is not None:
        metadata["original_time"] = original
    return metadata


def _user(reader: _Reader, key: str = "user") -> JSON | None:
    """Our `{sub, email, groups}` as an OCSF user; None when it names nobody."""
    user: JSON = {}
    sub = reader.text(key, "sub")
    if sub is not None:
        user["uid"] = sub
    email = reader.text(key, "email")
    if email is not None:
        if _EMAIL.match(email):
            user["email_addr"] = email
        if sub is None or "email_addr" not in user:
            user["name"] = email
    groups = reader.peek(key, "groups")
    if isinstance(groups, list) and all(isinstance(g, str) and g for g in groups):
        reader.claim(key, "groups")
        if groups:
            user["groups"] = [{"name": g} for g in groups]
    return user if "uid" in user or "name" in user else None


def _actor(reader: _Reader) -> JSON | None:
    """The person in `actor.user`, the AI agent acting for them in `actor.app_name`."""
    actor: JSON = {}
    user = _user(reader)
    if user is not None:
        actor["user"] = user
    app = reader.text("actor")
    if app is not None:
        actor["app_name"] = app
    session_id = _text(reader.peek("session_id"))
    if session_id is not None:
        actor["session"] = {"uid": session_id}
    return actor or None


def _source_endpoint(reader: _Reader) -> JSON | None:
    """The client's address; a peer that is no IP address (a socket path) as its name."""
    raw = reader.peek("source", "ip")
    ip = _ip(raw)
    if ip is not None:
        reader.claim("source", "ip")
        return {"ip": ip}
    name = reader.text("source", "ip")
    return {"name": name} if name is not None else None


def _connection_name(reader: _Reader) -> str | None:
    """Read, not claimed: `unmapped.connection` keeps the whole connection (name, type, agent)."""
    return _text(reader.peek("connection", "name"))


def _target(reader: _Reader) -> JSON:
    """The connection as the network classes' destination."""
    name = _connection_name(reader)
    return {"dst_endpoint": {"name": name}} if name is not None else {}


def _database(reader: _Reader) -> JSON:
    """The connection as Datastore Activity's database (the class needs one)."""
    type_id = _DATABASE_TYPES.get(_text(reader.peek("connection", "type")) or "", 0)
    return {
        "type_id": 1,
        "type": "Database",
        "database": {
            "name": _connection_name(reader) or _UNKNOWN,
            "type_id": type_id,
            "type": _DATABASE_TYPE_NAMES[type_id],
        },
    }


def _gatehouse_agent(name: str) -> JSON:
    return {
        "name": name,
        "type_id": _REMOTE_ACCESS,
        "type": "Remote Access",
        "vendor_name": "Gatehouse",
    }


# ---- outcome: status, severity, and the gateway's own decision -----------------------------


@dataclass(slots=True)
class _Outcome:
    status_id: int
    severity_id: int = INFORMATIONAL
    status_code: str | None = None
    status_detail: str | None = None
    action_id: int | None = None
    disposition_id: int | None = None
    policy: str | None = None
    other: str | None = None  # our own word: the caption of any of the ids that is 99 (Other)

    def fields(self) -> JSON:
        out: JSON = {
            "status_id": self.status_id,
            "status": self._caption(self.status_id, _STATUS_NAMES),
            "severity_id": self.severity_id,
            "severity": _SEVERITY_NAMES[self.severity_id],
        }
        if self.status_code is not None:
            out["status_code"] = self.status_code
        if self.status_detail is not None:
            out["status_detail"] = self.status_detail
        if self.action_id is not None:
            out["action_id"] = self.action_id
            out["action"] = self._caption(self.action_id, _ACTION_NAMES)
        if self.disposition_id is not None:
            out["disposition_id"] = self.disposition_id
            out["disposition"] = self._caption(self.disposition_id, _DISPOSITION_NAMES)
        if self.policy is not None:
            out["policy"] = {"name": self.policy}
        return out

    def _caption(self, value: int, names: Mapping[int, str]) -> str:
        return (self.other or "Other") if value == OTHER else names[value]


def _outcome(reader: _Reader, kind: str) -> _Outcome:
    """Success or failure, from the gateway's decision, the target's result, or the type."""
    outcome = _Outcome(SUCCESS if kind in _MAPPERS else UNKNOWN)
    decision = reader.text("decision", "result")
    if decision == "allow":
        outcome.status_id, outcome.action_id, outcome.disposition_id = SUCCESS, ALLOWED, 1
    elif decision == "deny":
        outcome.status_id, outcome.action_id, outcome.disposition_id = FAILURE, DENIED, BLOCKED
        outcome.severity_id = MEDIUM
        outcome.policy = reader.text("decision", "rule")
        outcome.status_detail = reader.text("decision", "reason")
    elif decision is not None:  # a word of the future (say "review"): neither yet
        outcome.status_id = outcome.action_id = outcome.disposition_id = OTHER
        outcome.other = decision
    _result(reader, outcome, http=kind.startswith("http."))
    if kind == "auth.fail":
        outcome.status_id, outcome.severity_id = FAILURE, MEDIUM
        outcome.action_id, outcome.disposition_id = DENIED, UNAUTHORIZED
    elif kind == "auth.login":
        outcome.action_id, outcome.disposition_id = ALLOWED, 1
    elif kind == "review.deny":
        outcome.status_id, outcome.action_id, outcome.disposition_id = FAILURE, DENIED, REJECTED
    elif kind == "review.approve":
        outcome.action_id, outcome.disposition_id = ALLOWED, APPROVED
    if outcome.status_detail is None:
        outcome.status_detail = reader.text("reason")
    if outcome.status_id == FAILURE and outcome.severity_id == INFORMATIONAL:
        outcome.severity_id = LOW
    return outcome


def _result(reader: _Reader, outcome: _Outcome, *, http: bool) -> None:
    """A failed statement, a non-zero exit or an HTTP error status is a failure."""
    if not isinstance(reader.peek("result"), Mapping):
        return
    if "error" in reader.peek("result"):
        error = reader.peek("result", "error")
        reader.claim("result", "error")
        if error is not None and error is not False:
            outcome.status_id = FAILURE
            outcome.status_code = error if isinstance(error, str) else json.dumps(error)
    exit_code = reader.integer("result", "exit_code")
    if exit_code is not None:
        outcome.status_code = outcome.status_code or str(exit_code)
        outcome.status_id = FAILURE if exit_code != 0 else outcome.status_id
    status = _integer(reader.peek("result", "status")) if http else None
    if status is not None:
        outcome.status_code = outcome.status_code or str(status)
        outcome.status_id = FAILURE if status >= 400 else outcome.status_id
    message = reader.text("result", "message")
    if message is not None:
        outcome.status_detail = message


# ---- one mapper per type -------------------------------------------------------------------


@dataclass(slots=True)
class _Mapped:
    class_uid: int
    activity_id: int
    fields: JSON = field(default_factory=dict)


_Mapper = Callable[["_Reader", str], _Mapped]


def _request_uid(reader: _Reader, key: str) -> str:
    """The seq of the request event (its own `seq`, or `ref` on a result): joins the halves."""
    seq = _integer(reader.peek(key))
    if seq is not None:
        return str(seq)
    return _text(reader.peek("id")) or _UNKNOWN


def _session(reader: _Reader, kind: str) -> _Mapped:
    """A database session is Datastore Activity, an SSH one SSH Activity, others Network."""
    start = kind == "session.start"
    fields = _duration(reader, "duration_ms")
    connection_type = _text(reader.peek("connection", "type"))
    if connection_type in _DATABASE_TYPES:
        return _Mapped(DATASTORE, 3 if start else OTHER, {**fields, **_database(reader)})
    fields.update(_target(reader))
    return _Mapped(SSH if connection_type == "ssh" else NETWORK, 1 if start else 2, fields)


def _db_query(reader: _Reader, kind: str) -> _Mapped:
    """Always Query (4): the verb of SQL is read from query_info.query_string, not guessed."""
    fields = _database(reader)
    statement = reader.text("request", "statement")
    if statement is not None:
        fields["query_info"] = {"query_string": statement, "uid": _request_uid(reader, "seq")}
    return _Mapped(DATASTORE, 4, fields)


def _db_result(reader: _Reader, kind: str) -> _Mapped:
    """The outcome of the same Query: status, SQLSTATE, duration; `ref` stays in unmapped."""
    return _Mapped(
        DATASTORE, 4, {**_database(reader), **_duration(reader, "result", "duration_ms")}
    )


def _ssh(reader: _Reader, kind: str) -> _Mapped:
    """SSH Activity has no command attribute: the command stays in `unmapped.request`, and a
    Command Line observable carries it so that cross-class command hunts still find it."""
    fields = _target(reader)
    fields.update(_duration(reader, "result", "duration_ms"))
    command = _command_line(_obj(reader.peek("request")))
    typed = _text(reader.peek("input", "line")) if kind == "ssh.input" else None
    if typed is not None:  # a line typed in a terminal: searchable like a command
        command = (typed, "", "line")
    if command is not None:
        line, _, member = command
        where = "input" if typed is not None else "request"
        fields["observables"] = [
            {
                "name": f"unmapped.{where}.{member}",
                "type_id": _COMMAND_LINE,
                "type": "Command Line",
                "value": line,
            }
        ]
    return _Mapped(SSH, OTHER, fields)


def _shell(reader: _Reader, kind: str) -> _Mapped:
    """A command run on the agent host: Launch, then Terminate with its exit code."""
    launch = kind == "shell.command"
    process: JSON = {"uid": _request_uid(reader, "seq" if launch else "ref")}
    command = _command_line(_obj(reader.peek("request")))
    if command is not None:
        process["cmd_line"], process["name"], member = command
        reader.claim("request", member)
    host = _text(reader.peek("connection", "agent")) or _connection_name(reader) or _UNKNOWN
    fields: JSON = {
        "process": process,
        "device": {
            "name": host,
            "type_id": 0,
            "type": "Unknown",
            "agent_list": [_gatehouse_agent(host)],
        },
    }
    exit_code = reader.integer("result", "exit_code")
    if exit_code is not None:
        fields["exit_code"] = exit_code
    fields.update(_duration(reader, "result", "duration_ms"))
    return _Mapped(PROCESS, 1 if launch else 2, fields)


def _http(reader: _Reader, kind: str) -> _Mapped:
    """The method is the activity; path and query are the URL; the status is the response."""
    fields = _target(reader)
    request: JSON = {}
    method = (_text(reader.peek("request", "method")) or "").upper()
    activity = _HTTP_METHODS.get(method, OTHER)
    if activity != OTHER:
        reader.claim("request", "method")
        request["http_method"] = method
    path = reader.text("request", "path")
    if path is not None:
        request["url"] = {"path": path}
        query = reader.text("request", "query")
        if query is not None:
            request["url"]["query_string"] = query
    user_agent = reader.text("request", "user_agent")
    if user_agent is not None:
        request["user_agent"] = user_agent
    status = reader.integer("result", "status")
    if status is not None:
        fields["http_response"] = {"code": status}
        fields["http_status"] = status
    if request or status is None:
        fields["http_request"] = request  # the class needs a request or a response
    fields.update(_duration(reader, "result", "duration_ms"))
    return _Mapped(HTTP, activity, fields)


def _auth(reader: _Reader, kind: str) -> _Mapped:
    """A logon to Gatehouse itself; a failed one usually names nobody."""
    user = _user(reader) or {"name": _UNKNOWN}
    return _Mapped(AUTHENTICATION, 1, {"user": user, "service": {"name": PRODUCT_NAME}})


def _review(reader: _Reader, kind: str) -> _Mapped:
    """Just-in-time access as privilege management: approve assigns, deny refuses to.

    The event's `user` is who acted (requester, then reviewer): the OCSF `user` is the one
    whose access it is, the requester, named by the review on approve and deny.
    """
    if kind == "review.request":
        target = _user(reader)
    elif isinstance(reader.peek("requester"), Mapping):
        target = _user(reader, "requester")
    else:
        target = _user(_Reader({"user": _obj(reader.peek("review", "requester"))}))
    connection = _text(reader.peek("review", "connection")) or _connection_name(reader)
    mode = _text(reader.peek("review", "mode")) or "access"
    fields: JSON = {
        "user": target or {"name": _UNKNOWN},
        "privileges": [f"{mode}:{connection or '*'}"],
    }
    if connection is not None:
        fields["resources"] = [{"name": connection, "type": "connection"}]
    return _Mapped(USER_ACCESS, OTHER if kind == "review.request" else 1, fields)


def _admin(reader: _Reader, kind: str) -> _Mapped:
    """A control-plane change is an API call: the whole `change` is the request's data."""
    change = _obj(reader.peek("change"))
    action = _text(change.get("action")) or kind
    noun, _, verb = action.rpartition(".")
    request: JSON = {"uid": _text(reader.peek("id")) or _UNKNOWN}
    if change:
        reader.claim("change")
        request["data"] = dict(change)
    fields: JSON = {
        "api": {"operation": action, "service": {"name": PRODUCT_NAME}, "request": request}
    }
    if noun:
        named = _text(change.get(noun))
        fields["resources"] = [{"name": named or noun, "type": noun}]
    return _Mapped(API, _API_VERBS.get(verb, OTHER), fields)


def _agent(reader: _Reader, kind: str) -> _Mapped:
    """An agent's control stream is a network connection it opens to the control plane."""
    name = reader.text("agent", "name") or _UNKNOWN
    endpoint: JSON = {"name": name}
    ip, port = _peer(reader.peek("agent", "peer"))
    if ip is not None:
        reader.claim("agent", "peer")
        endpoint["ip"] = ip
        if port is not None:
            endpoint["port"] = port
    hostname = reader.text("agent", "hostname")
    if hostname is not None:
        endpoint["hostname"] = hostname
    described = _gatehouse_agent(name)
    version = reader.text("agent", "version")
    if version is not None:
        described["version"] = version
    endpoint["agent_list"] = [described]
    # Open, Close; an enrollment or a certificate renewal is "Other", named by its type.
    activity = {"agent.connect": 1, "agent.disconnect": 2}.get(kind, OTHER)
    return _Mapped(NETWORK, activity, {"src_endpoint": endpoint})


def _peer(value: object) -> tuple[str | None, int | None]:
    """gRPC's `ipv4:10.0.0.7:5555` or `ipv6:[::1]:5555` as address and port."""
    if not isinstance(value, str):
        return None, None
    family, _, rest = value.partition(":")
    if family not in ("ipv4", "ipv6"):
        return None, None
    host, _, port = rest.rpartition(":")
    ip = _ip(host.strip("[]"))
    if ip is None:
        return None, None
    return ip, int(port) if port.isdigit() and int(port) <= 65535 else None


def _other(reader: _Reader, kind: str) -> _Mapped:
    """A type of no known family: API Activity "Other", the type its operation."""
    return _Mapped(API, OTHER, {"api": {"operation": kind, "service": {"name": PRODUCT_NAME}}})


_MAPPERS: Final[Mapping[str, _Mapper]] = {
    "session.start": _session,
    "session.end": _session,
    "db.query": _db_query,
    "db.result": _db_result,
    "ssh.exec": _ssh,
    "ssh.result": _ssh,
    "ssh.session": _ssh,
    "ssh.input": _ssh,
    "shell.command": _shell,
    "shell.result": _shell,
    "http.request": _http,
    "http.response": _http,
    "review.request": _review,
    "review.approve": _review,
    "review.deny": _review,
    "auth.login": _auth,
    "auth.fail": _auth,
    "admin.change": _admin,
    "agent.connect": _agent,
    "agent.disconnect": _agent,
}
_FAMILIES: Final[Mapping[str, _Mapper]] = {
    "session": _session,
    "db": _db_query,
    "ssh": _ssh,
    "shell": _shell,
    "http": _http,
    "review": _review,
    "auth": _auth,
    "admin": _admin,
    "agent": _agent,
}

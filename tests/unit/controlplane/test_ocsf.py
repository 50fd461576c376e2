"""Every event type maps to an OCSF 1.8.0 event that the real schema accepts.

The schema is the one shipped in `ocsf-json-schema` (compiled OCSF releases, turned into JSON
Schema with `additionalProperties: false`, required attributes, enums and OCSF's own patterns),
checked with `jsonschema`: offline, and strict enough that a misspelt attribute fails. The
samples are built the way the control plane builds them (`draft`) and chained the way the
writer chains them, so they are the exported shape, hash included.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from controlplane.audit.events import Draft, SessionContext, draft
from controlplane.audit.ocsf import OCSF_VERSION, to_ocsf
from controlplane.auth.identity import Identity
from trail.canonical import canonical
from trail.chain import GENESIS_HASH, link_hash

JSON = dict[str, Any]

ALICE = Identity(
    subject="00u1alice", email="alice@example.com", groups=("dba", "oncall"), actor="devin"
)
BOB = Identity(subject="00u2bob", email="bob@example.com", groups=("reviewers",))
ADMIN = Identity(subject="admin", email="admin@example.com", role="admin")


def session(kind: str, name: str) -> SessionContext:
    return SessionContext(
        session_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"gatehouse:{kind}:{name}")),
        identity=ALICE,
        connection={"name": name, "type": kind, "agent": "vpc-eu-1"},
        audit_mode="strict",
        source={"ip": "10.0.0.7", "client": "psql"},
    )


PG = session("postgres", "pg-prod")
SSH = session("ssh", "web-1")
SHELL = session("shell", "kubectl-prod")
WEB = session("http", "billing-api")


class Trail:
    """Seq, prev_hash and hash exactly as the writer assigns them; `hash` added as exported."""

    def __init__(self) -> None:
        self.seq = 0
        self.prev = GENESIS_HASH

    def add(self, item: Draft) -> JSON:
        self.seq += 1
        body = {**item.body, "seq": self.seq, "prev_hash": self.prev}
        self.prev = link_hash(self.prev, canonical(body))
        return {**body, "hash": self.prev}


def exported() -> dict[str, JSON]:
    """One realistic exported event of every type the product emits or will emit."""
    trail = Trail()
    events: dict[str, JSON] = {}

    def add(item: Draft) -> int:
        events[item.type] = trail.add(item)
        return trail.seq

    add(draft("agent.connect", agent=agent_info()))
    add(
        draft(
            "admin.change",
            identity=ADMIN,
            change={
                "action": "policy.apply",
                "version": 3,
                "file": "gatehouse.yaml",
                "sha256": "9f2c" * 16,
                "changes": ["+ connection pg-prod", "+ rule no-destructive"],
            },
        )
    )
    add(draft("auth.login", identity=ALICE, source={"ip": "203.0.113.9", "client": "cli"}))
    add(
        draft(
            "auth.fail",
            source={"ip": "203.0.113.66", "client": "cli"},
            reason="the token has expired; log in again with `gatehouse login`",
        )
    )
    review = {"id": "rv-7", "connection": "pg-prod", "mode": "exec", "reason": "INC-4211"}
    add(draft("review.request", identity=ALICE, review=review))
    decided = {**review, "requester": ALICE.as_user()}
    expiring = {**decided, "expires_at": "2026-11-27T18:15:02.123456Z"}
    add(draft("review.approve", identity=BOB, review=expiring))
    add(draft("review.deny", identity=BOB, review=decided, reason="use the read replica"))
    add(draft("session.start", session=PG, mode="exec"))
    query = add(
        draft(
            "db.query",
            session=PG,
            request={
                "statement": "UPDATE orders SET state = $1 WHERE id = $2",
                "protocol": "extended",
                "params": ["paid", "42"],
            },
            decision={"result": "allow"},
        )
    )
    add(
        draft(
            "db.result",
            session=PG,
            ref=query,
            result={
                "rows": 1,
                "duration_ms": 0.41,
                "error": None,
                "masked": False,
                "command": "UPDATE 1",
            },
        )
    )
    add(draft("session.end", session=PG, reason="closed", duration_ms=5321.5, statements=1))
    allow = {"result": "allow"}
    exec_ = add(
        draft(
            "ssh.exec", session=SSH, request={"command": "systemctl status nginx"}, decision=allow
        )
    )
    add(
        draft(
            "ssh.result",
            session=SSH,
            ref=exec_,
            result={
                "exit_code": 0,
                "duration_ms": 812.25,
                "bytes": {"in": 0, "out": 2048, "err": 0},
            },
            recording={"format": "asciicast-v2", "sha256": "ab" * 32, "bytes": 4096, "events": 9},
        )
    )
    pty = {"pty": {"term": "xterm-256color", "cols": 120, "rows": 40}}
    add(draft("ssh.session", session=SSH, request=pty, decision=allow))
    add(draft("ssh.input", session=SSH, input={"line": "tail -n 50 /var/log/syslog"}))
    command = add(
        draft(
            "shell.command",
            session=SHELL,
            request={"argv": ["kubectl", "get", "pods", "-n", "payments"], "stdin": False},
            decision=allow,
        )
    )
    add(
        draft(
            "shell.result",
            session=SHELL,
            ref=command,
            result={"exit_code": 1, "duration_ms": 230.0, "output_bytes": 96, "error": None},
        )
    )
    request = add(
        draft(
            "http.request",
            session=WEB,
            request={"method": "POST", "path": "/v1/refunds", "query": "dry_run=1", "bytes": 128},
            decision=allow,
        )
    )
    add(
        draft(
            "http.response",
            session=WEB,
            ref=request,
            result={"status": 201, "bytes": 512, "duration_ms": 35.2},
        )
    )
    add(draft("agent.disconnect", agent=agent_info(), reason="the control stream ended"))
    return events


def agent_info() -> JSON:
    return {
        "name": "vpc-eu-1",
        "version": "0.1.0",
        "hostname": "gh-agent-1",
        "peer": "ipv4:10.0.3.4:51234",
    }


SAMPLES = exported()

# type → (class_uid, activity_id): the decisions docs/ocsf.md explains.
EXPECTED = {
    "session.start": (6005, 3),
    "session.end": (6005, 99),
    "db.query": (6005, 4),
    "db.result": (6005, 4),
    "ssh.exec": (4007, 99),
    "ssh.result": (4007, 99),
    "ssh.session": (4007, 99),
    "ssh.input": (4007, 99),
    "shell.command": (1007, 1),
    "shell.result": (1007, 2),
    "http.request": (4002, 6),
    "http.response": (4002, 99),
    "review.request": (3005, 99),
    "review.approve": (3005, 1),
    "review.deny": (3005, 1),
    "auth.login": (3002, 1),
    "auth.fail": (3002, 1),
    "admin.change": (6003, 3),
    "agent.connect": (4001, 1),
    "agent.disconnect": (4001, 2),
}


# ---- the validator ------------------------------------------------------------------------


@functools.cache
def schema() -> Mapping[str, Any]:
    return get_ocsf_schema(version=OCSF_VERSION)  # type: ignore[no-any-return]


@functools.cache
def validator(class_uid: int, profiles: tuple[str, ...]) -> Draft202012Validator:
    ocsf = OcsfJsonSchemaEmbedded(schema())
    name = ocsf.lookup_class_name_from_uid(class_uid)
    return Draft202012Validator(ocsf.get_class_schema(name, list(profiles)))


def assert_valid(event: Mapping[str, Any]) -> None:
    """Valid against the class's schema with the profiles the event declares, and its
    caption siblings (class_name, activity_name, status, …) agree with their ids."""
    profiles = tuple(event["metadata"].get("profiles", ()))
    errors = sorted(
        validator(event["class_uid"], profiles).iter_errors(event), key=lambda e: e.json_path
    )
    assert not errors, "\n".join(f"{e.json_path}: {e.message[:200]}" for e in errors)
    assert_captions(event)
    json.dumps(event, allow_nan=False)  # JSON-ready as it is


def assert_captions(event: Mapping[str, Any]) -> None:
    classes = {c["uid"]: c for c in schema()["classes"].values()}
    cls = classes[event["class_uid"]]
    attributes = cls["attributes"]
    assert event["class_name"] == cls["caption"]
    assert event["category_name"] == cls["category_name"]
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert event["type_name"] == attributes["type_uid"]["enum"][str(event["type_uid"])]["caption"]
    for key, sibling in (
        ("activity_id", "activity_name"),
        ("severity_id", "severity"),
        ("status_id", "status"),
        ("action_id", "action"),
        ("disposition_id", "disposition"),
    ):
        if key in event and event[key] != 99:
            caption = attributes[key]["enum"][str(event[key])]["caption"]
            assert event[sibling] == caption, (key, event[sibling], caption)
    if event["activity_id"] == 99:  # OCSF: then activity_name is the source's own word
        assert event["activity_name"] == event["metadata"]["event_code"]


def test_the_validator_rejects_what_ocsf_does_not_define() -> None:
    """A control: the checks above would mean nothing if the validator accepted anything."""
    good = to_ocsf(SAMPLES["db.query"])
    for bad in (
        {**good, "query": good["query_info"]},  # an attribute the class does not have
        {**good, "activity_id": 42},  # not in the enum
        {**good, "query_info": {"uid": "9"}},  # query_string is required
        {key: value for key, value in good.items() if key != "src_endpoint"},  # required
        {**good, "src_endpoint": {"ip": "10.0.0.999"}},  # OCSF's ip_t pattern
    ):
        with pytest.raises(AssertionError):
            assert_valid(bad)


# ---- every type ---------------------------------------------------------------------------


def test_the_samples_cover_every_type() -> None:
    assert set(SAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_every_event_type_maps_to_a_valid_ocsf_event(kind: str) -> None:
    event = SAMPLES[kind]
    ocsf = to_ocsf(event)
    assert_valid(ocsf)
    assert (ocsf["class_uid"], ocsf["activity_id"]) == EXPECTED[kind]
    assert ocsf["category_uid"] == ocsf["class_uid"] // 1000
    assert ocsf["type_uid"] == ocsf["class_uid"] * 100 + ocsf["activity_id"]
    metadata = ocsf["metadata"]
    assert metadata["version"] == OCSF_VERSION
    assert metadata["product"] == {
        "name": "Gatehouse",
        "vendor_name": "Gatehouse",
        "version": "0.1.0",
    }
    assert metadata["uid"] == event["id"]
    assert metadata["sequence"] == event["seq"]
    assert metadata["log_name"] == "audit"
    assert metadata["event_code"] == kind
    assert metadata.get("correlation_uid") == event.get("session_id")
    assert ocsf["unmapped"]["hash"] == event["hash"]
    assert ocsf["unmapped"]["prev_hash"] == event["prev_hash"]
    assert ocsf["status_id"] in (1, 2)
    assert "user" not in event or ocsf["actor"]["user"]["uid"] == event["user"]["sub"]


def test_mapping_leaves_the_event_untouched_and_is_deterministic() -> None:
    for event in SAMPLES.values():
        before = json.dumps(event, sort_keys=True)
        assert to_ocsf(event) == to_ocsf(event)
        assert json.dumps(event, sort_keys=True) == before


# ---- the important fields -----------------------------------------------------------------


def test_statement_reaches_query_info() -> None:
    event = SAMPLES["db.query"]
    ocsf = to_ocsf(event)
    assert ocsf["query_info"] == {
        "query_string": "UPDATE orders SET state = $1 WHERE id = $2",
        "uid": str(event["seq"]),
    }
    assert ocsf["database"] == {"name": "pg-prod", "type_id": 1, "type": "Relational"}
    # What OCSF has no place for is kept, under our names, without repeating the statement.
    assert ocsf["unmapped"]["request"] == {"protocol": "extended", "params": ["paid", "42"]}
    assert ocsf["unmapped"]["connection"] == {
        "name": "pg-prod",
        "type": "postgres",
        "agent": "vpc-eu-1",
    }
    assert ocsf["unmapped"]["audit_mode"] == "strict"
    assert ocsf["unmapped"]["source"] == {"client": "psql"}
    assert (ocsf["status_id"], ocsf["action_id"], ocsf["disposition_id"]) == (1, 1, 1)


def test_result_refers_to_its_query() -> None:
    query, result = SAMPLES["db.query"], SAMPLES["db.result"]
    ocsf = to_ocsf(result)
    assert ocsf["unmapped"]["ref"] == query["seq"] == int(to_ocsf(query)["query_info"]["uid"])
    assert ocsf["duration"] == 0  # OCSF durations are whole milliseconds…
    assert ocsf["unmapped"]["result"] == {"rows": 1, "masked": False, "command": "UPDATE 1"}
    assert ocsf["status_id"] == 1


def test_user_and_the_ai_agent_acting_for_them() -> None:
    ocsf = to_ocsf(SAMPLES["db.query"])
    assert ocsf["actor"]["user"] == {
        "uid": "00u1alice",
        "email_addr": "alice@example.com",
        "groups": [{"name": "dba"}, {"name": "oncall"}],
    }
    assert ocsf["actor"]["app_name"] == "devin"
    assert ocsf["actor"]["session"] == {"uid": SAMPLES["db.query"]["session_id"]}
    assert ocsf["src_endpoint"] == {"ip": "10.0.0.7"}
    assert "user" not in ocsf["unmapped"] and "actor" not in ocsf["unmapped"]


def test_denied_query_is_a_blocked_failure_naming_its_rule() -> None:
    denied = Trail().add(
        draft(
            "db.query",
            session=PG,
            request={"statement": "DROP TABLE orders", "protocol": "simple"},
            decision={
                "result": "deny",
                "rule": "no-destructive",
                "reason": "DROP statements are denied on pg-prod",
            },
        )
    )
    ocsf = to_ocsf(denied)
    assert_valid(ocsf)
    assert (ocsf["status_id"], ocsf["status"]) == (2, "Failure")
    assert (ocsf["action_id"], ocsf["action"]) == (2, "Denied")
    assert (ocsf["disposition_id"], ocsf["disposition"]) == (2, "Blocked")
    assert ocsf["policy"] == {"name": "no-destructive"}
    assert ocsf["status_detail"] == "DROP statements are denied on pg-prod"
    assert ocsf["severity_id"] == 3
    assert ocsf["query_info"]["query_string"] == "DROP TABLE orders"
    assert "decision" not in ocsf["unmapped"]


def test_failed_statement_is_a_failure_with_its_sqlstate() -> None:
    failed = Trail().add(
        draft(
            "db.result",
            session=PG,
            ref=41,
            result={
                "rows": None,
                "duration_ms": 1.5,
                "error": "42P01",
                "masked": False,
                "message": 'relation "nope" does not exist',
            },
        )
    )
    ocsf = to_ocsf(failed)
    assert_valid(ocsf)
    assert (ocsf["status_id"], ocsf["status_code"]) == (2, "42P01")
    assert ocsf["status_detail"] == 'relation "nope" does not exist'
    assert ocsf["severity_id"] == 2


@pytest.mark.parametrize(
    ("kind", "detail"),
    [("auth.fail", "the token has expired"), ("review.deny", "use the read replica")],
)
def test_refusals_are_failures_with_their_reason(kind: str, detail: str) -> None:
    ocsf = to_ocsf(SAMPLES[kind])
    assert ocsf["status_id"] == 2
    assert detail in ocsf["status_detail"]


def test_logon_failure_names_nobody_but_keeps_the_address() -> None:
    ocsf = to_ocsf(SAMPLES["auth.fail"])
    assert ocsf["user"] == {"name": "unknown"}
    assert ocsf["src_endpoint"] == {"ip": "203.0.113.66"}
    assert ocsf["disposition"] == "Unauthorized"


def test_review_names_requester_as_user_and_reviewer_as_actor() -> None:
    ocsf = to_ocsf(SAMPLES["review.approve"])
    assert ocsf["user"]["uid"] == "00u1alice"
    assert ocsf["actor"]["user"]["uid"] == "00u2bob"
    assert ocsf["privileges"] == ["exec:pg-prod"]
    assert ocsf["resources"] == [{"name": "pg-prod", "type": "connection"}]
    assert ocsf["disposition"] == "Approved"
    assert ocsf["unmapped"]["review"]["expires_at"] == "2026-11-27T18:15:02.123456Z"


def test_commands_reach_the_process_and_an_observable() -> None:
    shell = to_ocsf(SAMPLES["shell.command"])
    assert shell["process"]["cmd_line"] == "kubectl get pods -n payments"
    assert shell["process"]["name"] == "kubectl"
    assert shell["device"]["name"] == "vpc-eu-1"
    result = to_ocsf(SAMPLES["shell.result"])
    assert result["process"]["uid"] == shell["process"]["uid"]  # launch and exit joined
    assert (result["exit_code"], result["status_id"]) == (1, 2)
    ssh = to_ocsf(SAMPLES["ssh.exec"])
    assert ssh["observables"] == [
        {
            "name": "unmapped.request.command",
            "type_id": 13,
            "type": "Command Line",
            "value": "systemctl status nginx",
        }
    ]
    assert ssh["unmapped"]["request"]["command"] == "systemctl status nginx"
    assert ssh["dst_endpoint"] == {"name": "web-1"}
    typed = to_ocsf(SAMPLES["ssh.input"])  # a line typed in a terminal is searchable too
    assert typed["observables"][0]["value"] == "tail -n 50 /var/log/syslog"
    assert typed["observables"][0]["name"] == "unmapped.input.line"


def test_http_request_and_response() -> None:
    request = to_ocsf(SAMPLES["http.request"])
    assert request["http_request"] == {
        "http_method": "POST",
        "url": {"path": "/v1/refunds", "query_string": "dry_run=1"},
    }
    response = to_ocsf(SAMPLES["http.response"])
    assert (response["http_status"], response["http_response"]) == (201, {"code": 201})
    failed = {**SAMPLES["http.response"], "result": {"status": 503, "duration_ms": 1.0}}
    ocsf = to_ocsf(failed)
    assert_valid(ocsf)
    assert (ocsf["status_id"], ocsf["status_code"]) == (2, "503")


def test_agent_connection_comes_from_its_peer() -> None:
    ocsf = to_ocsf(SAMPLES["agent.connect"])
    endpoint = ocsf["src_endpoint"]
    assert (endpoint["ip"], endpoint["port"], endpoint["hostname"]) == (
        "10.0.3.4",
        51234,
        "gh-agent-1",
    )
    assert endpoint["agent_list"][0]["version"] == "0.1.0"
    assert "actor" not in ocsf and "agent" not in ocsf["unmapped"]
    assert to_ocsf(SAMPLES["agent.disconnect"])["status_detail"] == "the control stream ended"


@pytest.mark.parametrize(
    ("kind", "expected"), [("postgres", (6005, 3)), ("ssh", (4007, 1)), ("shell", (4001, 1))]
)
def test_session_class_follows_the_connection_type(kind: str, expected: tuple[int, int]) -> None:
    event = Trail().add(draft("session.start", session=session(kind, "target"), mode="connect"))
    ocsf = to_ocsf(event)
    assert_valid(ocsf)
    assert (ocsf["class_uid"], ocsf["activity_id"]) == expected


def test_time_is_epoch_milliseconds_and_the_original_is_kept() -> None:
    event = {**SAMPLES["db.query"], "time": "2026-11-27T10:15:02.123456Z"}
    ocsf = to_ocsf(event)
    assert ocsf["time"] == 1795774502123
    assert ocsf["metadata"]["original_time"] == "2026-11-27T10:15:02.123456Z"


def test_hashes_stay_verifiable_from_the_ocsf_record() -> None:
    event = SAMPLES["db.query"]
    ocsf = to_ocsf(event, include_raw=True)
    assert_valid(ocsf)
    raw = json.loads(ocsf["raw_data"])
    assert raw == event
    body = {k: v for k, v in raw.items() if k != "hash"}
    assert link_hash(ocsf["unmapped"]["prev_hash"], canonical(body)) == ocsf["unmapped"]["hash"]


# ---- types the table does not know ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "class_uid"),
    [("quota.exceeded", 6003), ("audit.checkpoint", 6003), ("db.cancel", 6005), ("", 6003)],
)
def test_unknown_type_still_maps_to_a_valid_event(kind: str, class_uid: int) -> None:
    fields: JSON = {"checkpoint": {"seq": 99, "hash": "ab" * 32, "signature": "c2ln"}}
    item = draft(kind, session=PG, **fields) if kind == "db.cancel" else draft(kind, **fields)
    event = Trail().add(item)
    ocsf = to_ocsf(event)
    assert_valid(ocsf)
    assert (ocsf["class_uid"], ocsf["activity_id"]) == (class_uid, 99)
    assert ocsf["activity_name"] == ocsf["metadata"]["event_code"] == (kind or "unknown")
    assert ocsf["unmapped"]["checkpoint"] == fields["checkpoint"]
    assert ocsf["unmapped"]["hash"] == event["hash"]
    if class_uid == 6003:
        assert ocsf["api"]["operation"] == (kind or "unknown")
        assert ocsf["status_id"] == 0


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def members(*names: str) -> st.SearchStrategy[dict[str, Any]]:
    """An object with some of our members, holding anything JSON can."""
    value = JSON_VALUES | st.ip_addresses().map(str) | st.sampled_from(["GET", "ipv4:1.2.3.4:5"])
    return st.dictionaries(st.sampled_from(names), value, max_size=len(names))


ODD_EVENTS = st.fixed_dictionaries(
    {"type": st.sampled_from([*EXPECTED, "db.cancel", "x.y"]) | JSON_VALUES},
    optional={
        "seq": JSON_VALUES,
        "id": JSON_VALUES,
        "time": st.datetimes().map(lambda d: d.isoformat()) | JSON_VALUES,
        "session_id": JSON_VALUES,
        "actor": JSON_VALUES,
        "reason": JSON_VALUES,
        "duration_ms": JSON_VALUES,
        "ref": JSON_VALUES,
        "user": members("sub", "email", "groups"),
        "source": members("ip", "client"),
        "connection": members("name", "type", "agent"),
        "request": members("statement", "command", "argv", "method", "path", "query"),
        "result": members("error", "exit_code", "status", "duration_ms", "message", "rows"),
        "decision": members("result", "rule", "reason"),
        "agent": members("name", "peer", "hostname", "version"),
        "change": members("action", "agent", "policy"),
        "review": members("connection", "mode", "requester"),
        "hash": JSON_VALUES,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ODD_EVENTS)
def test_any_event_shape_maps_to_a_valid_event_without_raising(event: JSON) -> None:
    assert_valid(to_ocsf(event))


def test_the_shapes_of_sessions_that_end_abnormally_map_to_valid_events() -> None:
    """An auth.fail overflow (no one address), a session.end that lost results, a result with
    values left out and an unknown command outcome: valid, failures where they failed, and
    nothing of them lost (`unmapped`)."""
    from controlplane.audit.events import draft_result

    trail = Trail()
    overflow = to_ocsf(
        trail.add(
            draft(
                "auth.fail",
                reason="the token is not known to this control plane",
                credential="gatehouse token",
                count=42,
                reasons={"the token is not known to this control plane": 42},
                window={"start": "2026-11-27T10:15:02.123456Z", "seconds": 60},
                overflow={"tracked_sources": 3, "sources": {"127.0.0.13": 8}, "unlisted": 0},
            )
        )
    )
    assert_valid(overflow)
    assert overflow["status_id"] == 2 and "src_endpoint" not in overflow
    assert overflow["unmapped"]["overflow"]["sources"] == {"127.0.0.13": 8}
    end = to_ocsf(
        trail.add(draft("session.end", session=PG, reason="audit_lost: …", results_lost=2))
    )
    assert_valid(end)
    assert end["unmapped"]["results_lost"] == 2
    result = to_ocsf(
        trail.add(
            draft_result("db.result", session=PG, ref=1, result={"rows": 1, "message": "\ud800"})
        )
    )
    assert_valid(result)
    assert result["unmapped"]["dropped"] == {
        "result.message": "holds a lone surrogate: it is not valid Unicode text"
    }
    unknown = to_ocsf(
        trail.add(
            draft_result(
                "shell.result",
                session=SHELL,
                ref=2,
                result={"error": "unknown", "message": "the session ended before …: agent_lost"},
            )
        )
    )
    assert_valid(unknown)
    assert unknown["status_id"] == 2 and unknown["status_code"] == "unknown"
    assert unknown["status_detail"].endswith("agent_lost")

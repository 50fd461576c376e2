"""Masking at the agent, end to end: a policy's `masking:` rule reaches the agent, results come
back masked through `gatehouse exec`, and the real values appear in no output and no event."""

from __future__ import annotations

import json
import time
import uuid

from tests.e2e.conftest import AGENT, Stack

MASKED_POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
    masking: [pii]
masking:
  - name: pii
    columns: [email]
    detectors: [credit_card, secret]
"""


def test_results_are_masked_at_the_agent_and_recorded_as_masked(own_stack: Stack) -> None:
    stack = own_stack
    tag = uuid.uuid4().hex[:10]
    table = f"people_{tag}"
    # The real values, which no statement spells out (statements are recorded as they are):
    # the database computes them.
    email = f"ann.{tag}@example.com"
    card = "4111 1111 1111 1111"
    key = "AKIAIOSFODNN7EXAMPLE"
    setup = (
        f"create table {table} (id int, email text, note text, card_number bigint);"
        f"insert into {table} select 1, concat('ann.', '{tag}', '@example.com'),"
        f" concat('card ', '4111 1111', ' 1111 1111', ' key AKIA', 'IOSFODNN7EXAMPLE'),"
        " 4111111111111110 + 1"
    )
    created = stack.cli("exec", "pg", "-c", setup)
    assert created.returncode == 0, created.stderr

    applied = stack.apply(MASKED_POLICY.format(agent=AGENT, port=stack.pg.port))
    assert applied.returncode == 0, applied.stderr
    sql = f"select id, email, note, card_number from {table}"
    deadline = time.monotonic() + 20
    while True:  # the agent gets the new policy over its control stream, within a second or so
        result = stack.cli("exec", "pg", "-c", sql, "-o", "json")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        if document["rows"][0][1] != email or time.monotonic() > deadline:
            break
        time.sleep(0.3)

    assert document["columns"] == ["id", "email", "note", "card_number"]
    assert document["rows"] == [[1, "****", "card **** **** **** 1111 key AKIA****", None]]

    events = stack.events()
    queries = [e for e in events if e["type"] == "db.query" and e["request"]["statement"] == sql]
    last = queries[-1]
    (db_result,) = [e for e in events if e["type"] == "db.result" and e.get("ref") == last["seq"]]
    assert db_result["result"]["masked"] is True
    assert db_result["result"]["rows"] == 1

    exported = json.dumps(events) + stack.cli("audit", "export", "--format", "ocsf").stdout
    for real in (email, card, card.replace(" ", ""), key):
        assert real not in result.stdout
        assert real not in exported
        assert real not in stack.agent.log()

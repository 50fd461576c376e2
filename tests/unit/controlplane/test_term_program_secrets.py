"""A database client's program on stdin is SQL: its password literals leave the event too."""

from __future__ import annotations

import hashlib

import pytest

from controlplane.policy.programs import stdin_readers
from controlplane.relay.term.inspector import _program_event

SECRET = "hunter2-Zq9"


@pytest.mark.parametrize(
    ("command", "program"),
    [
        ("psql -h db app", f"begin;\ncreate role app login password '{SECRET}';\ncommit;\n"),
        ("sudo -u postgres /usr/bin/psql", f"ALTER ROLE app PASSWORD '{SECRET}';"),
        ("mysql -u root app", f"CREATE USER app IDENTIFIED BY '{SECRET}';\n"),
        ("mariadb", f"SET PASSWORD FOR app = PASSWORD('{SECRET}');"),
    ],
)
def test_password_literals_in_a_database_clients_program_are_masked(
    command: str, program: str
) -> None:
    data = program.encode()
    event = _program_event(data, stdin_readers(text=command), truncated=False)
    assert SECRET not in event["text"] and "hunter" not in event["text"]
    assert "'***'" in event["text"]
    # With the rest of the program in the event, its digest would test guesses of the password.
    assert "sha256" not in event and event["masked"] is True
    assert event["bytes"] == len(data)


def test_another_program_is_kept_as_it_came() -> None:
    data = b"print('password')\n"
    event = _program_event(data, stdin_readers(text="python3"), truncated=False)
    assert event["text"] == data.decode()
    assert event["sha256"] == hashlib.sha256(data).hexdigest() and "masked" not in event


def test_a_database_clients_program_without_a_password_keeps_its_digest() -> None:
    data = b"select 1;\n"
    event = _program_event(data, stdin_readers(text="psql app"), truncated=False)
    assert event["sha256"] == hashlib.sha256(data).hexdigest() and "masked" not in event

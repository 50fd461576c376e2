"""A secret on a command line stays out of the trail: the command event, the refusal's reason,
the recording's title, a stdin reader's words (the `mcp.call` that sent it: test_mcp_call.py).
What runs, and what guardrails decide on, is the command as it came."""

from __future__ import annotations

import json

from controlplane.audit.writer import AuditWriter
from controlplane.policy.commands import CommandGuard
from controlplane.policy.document import Guardrail
from controlplane.store.database import Database
from tests.unit.controlplane.test_term_inspector import Harness, decode, events, start
from wire.term import codec

SECRET = "S3cret-Zq9"


def leaks(db: Database) -> bool:
    return SECRET in json.dumps(events(db))


async def test_an_ssh_command_runs_with_its_secret_and_is_recorded_without(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "exec")
    sent = start(command=f"mysql -uroot -p{SECRET} -e 'select 1'")
    assert await h.inspector.from_client(sent) == sent  # the target gets it unchanged
    [event] = events(db)
    assert event["request"] == {"command": "mysql -uroot -p**** -e 'select 1'", "masked": True}
    await h.agent(codec.encode_exit(codec.Exit(0)))
    assert not leaks(db)


async def test_a_shell_argv_is_recorded_with_its_secrets_masked(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "shell", "exec")
    argv = ("env", f"PGPASSWORD={SECRET}", "sh", "-c", f"curl -u app:{SECRET} https://x")
    sent = start(argv=argv)
    assert await h.inspector.from_client(sent) == sent
    [event] = events(db)
    assert event["request"]["argv"] == [
        "env", "PGPASSWORD=****", "sh", "-c", "curl -u app:**** https://x"
    ]  # fmt: skip
    assert event["request"]["masked"] is True
    assert not leaks(db)
    # Only a command that had a secret says so.
    h = Harness(db, writer, "shell", "exec")
    await h.inspector.from_client(start(argv=("ssh", "-p", "2222", "host", "uptime")))
    event = events(db)[-1]
    assert event["request"]["argv"] == ["ssh", "-p", "2222", "host", "uptime"]
    assert "masked" not in event["request"]


async def test_guardrails_decide_on_the_real_command_and_their_reason_is_masked(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "exec")
    h.inspector._guard = CommandGuard(
        [Guardrail(name="no-root-login", deny_commands=[f"mysql -uroot -p{SECRET}*"])]
    )
    assert await h.inspector.from_client(start(command=f"sudo mysql -uroot -p{SECRET} app")) == b""
    [event] = events(db)
    assert event["decision"]["result"] == "deny"
    assert event["decision"]["rule"] == "no-root-login"
    assert "mysql -uroot -p**** app" in event["decision"]["reason"]
    assert event["request"]["command"] == "sudo mysql -uroot -p**** app"
    assert not leaks(db)
    # The caller is told in its own words: its stderr is not the trail.
    answer = decode(b"".join(h.inspector.take_synthetic()))
    assert SECRET.encode() in answer[0][1]


async def test_a_refused_environment_is_recorded_without_its_values(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "shell", "exec")
    env = {"PGPASSWORD": SECRET, "LANG": "C.UTF-8"}
    assert await h.inspector.from_client(start(argv=("psql", "-h", "db"), env=env)) == b""
    [event] = events(db)
    assert event["decision"]["rule"] == "(env)"
    assert event["request"]["env"] == {"PGPASSWORD": "****", "LANG": "C.UTF-8"}
    assert event["request"]["masked"] is True
    assert not leaks(db)


async def test_a_locale_refused_for_its_value_is_named_without_a_secret(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "exec")
    await h.inspector.from_client(start(command="date", env={"LC_ALL": f"x {SECRET}"}))
    [event] = events(db)
    assert event["decision"]["rule"] == "(env)"
    assert event["request"]["env"] == {"LC_ALL": "****"}
    assert not leaks(db)


async def test_a_terminal_recordings_title_has_the_secret_masked(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "connect")
    sent = start(command=f"mysql -uroot -p{SECRET}", pty=codec.Pty("xterm", 80, 24))
    assert await h.inspector.from_client(sent) == sent
    await h.agent(codec.encode(codec.STDOUT, b"mysql> "), codec.encode_exit(codec.Exit(0)))
    header = json.loads(b"".join(h.pieces[i] for i in sorted(h.pieces)).splitlines()[0])
    assert header["title"] == "web-1: mysql -uroot -p****"
    assert not leaks(db)


async def test_a_stdin_readers_words_and_a_shell_program_are_masked(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "shell", "exec")
    await h.inspector.from_client(start(argv=("mysql", "-uroot", f"-p{SECRET}", "app")))
    await h.inspector.from_client(
        codec.encode(codec.INPUT, b"select 1;\n") + codec.encode(codec.EOF)
    )
    [event] = events(db)
    assert event["request"]["stdin"]["readers"][0]["command"] == [
        "mysql",
        "-uroot",
        "-p****",
        "app",
    ]
    assert event["request"]["stdin"]["text"] == "select 1;\n"
    assert not leaks(db)

    h = Harness(db, writer, "shell", "exec")
    program = f"export MYSQL_PWD={SECRET}\nmysqldump -uroot -p{SECRET} app\n".encode()
    await h.inspector.from_client(start(argv=("sh",)))
    await h.inspector.from_client(codec.encode(codec.INPUT, program) + codec.encode(codec.EOF))
    stdin = events(db)[-1]["request"]["stdin"]
    assert stdin["text"] == "export MYSQL_PWD=****\nmysqldump -uroot -p**** app\n"
    assert stdin["masked"] is True and "sha256" not in stdin  # a digest would test guesses
    assert not leaks(db)

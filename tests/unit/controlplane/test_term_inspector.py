"""Terminal-stream inspection: a command is decided and committed before it is forwarded, a
denied one never is, and the exit reaches the client only once its result is recorded."""

import hashlib
import json
from typing import Any

import pytest
from sqlmodel import col, select

from controlplane.audit.events import SessionContext
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.policy.commands import CommandGuard
from controlplane.policy.document import Guardrail
from controlplane.relay.term.inspector import TermInspector
from controlplane.store.database import Database
from controlplane.store.models import EventRow
from gatehouse.v1 import tunnel_pb2
from wire.term import codec


def events(db: Database) -> list[dict[str, Any]]:
    with db.read_session() as session:
        rows = session.exec(select(EventRow.body).order_by(col(EventRow.seq)))
        return [json.loads(body) for body in rows]


ROOT_AGENT = codec.RunAs("agent", 0, "root")
"""What an agent running as root says at attach for a `run_as: agent` connection."""


class Harness:
    def __init__(
        self,
        db: Database,
        writer: AuditWriter,
        kind: str,
        mode: str,
        shell: tuple[str, ...] | None = None,
        run_as: str = "agent",
        agent_run_as: codec.RunAs | None = ROOT_AGENT,
    ) -> None:
        self.wakes = 0
        self.pieces: dict[int, bytes] = {}
        self.recorded: list[int] = []
        ctx = SessionContext(
            session_id="sess-1",
            identity=Identity("alice", email="alice@example.com", groups=("ops",)),
            connection={"name": "web-1", "type": kind, "agent": "vpc-1"},
            audit_mode="strict",
            source={"ip": "192.0.2.10"},
        )
        guard = CommandGuard([Guardrail(name="no-rm-root", deny_commands=["rm -rf /"])])

        async def store(index: int, data: bytes) -> None:
            self.pieces[index] = data

        async def recorded(seq: int) -> None:
            self.recorded.append(seq)

        self.inspector = TermInspector(
            ctx,
            writer,
            self.wake,
            kind=kind,  # type: ignore[arg-type]
            mode=mode,
            guard=guard,
            store=store,
            recorded=recorded,
            workdir="/srv/app" if kind == "shell" else None,
            shell=shell,
            run_as=run_as if kind == "shell" else None,
            agent_run_as=agent_run_as if kind == "shell" else None,
        )

    def wake(self) -> None:
        self.wakes += 1

    async def agent(self, *messages: bytes) -> bytes:
        return b"".join(await self.inspector.from_agent(tunnel_pb2.Frame(data=b"".join(messages))))


def start(**kwargs: Any) -> bytes:
    return codec.encode_start(codec.Start(**kwargs))


def decode(data: bytes) -> list[tuple[int, bytes]]:
    return [(m.tag, bytes(m.body)) for m in codec.TermFramer.from_target().feed(data)]


async def test_a_command_is_committed_before_it_is_forwarded(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "exec")
    sent = start(argv=("uname", "-a")) + codec.encode(codec.INPUT, b"abc") + codec.encode(codec.EOF)
    forwarded = await h.inspector.from_client(sent)
    assert forwarded == sent
    [event] = events(db)  # on disk already, before the bytes go anywhere
    assert event["type"] == "ssh.exec"
    assert event["request"] == {"command": "uname -a"}
    assert event["decision"] == {"result": "allow"}
    out = await h.agent(
        codec.encode(codec.STDOUT, b"Linux\n"),
        codec.encode(codec.STDERR, b"warn\n"),
        codec.encode_exit(codec.Exit(3)),
    )
    assert [t for t, _ in decode(out)] == [codec.STDOUT, codec.STDERR, codec.EXIT]
    result = events(db)[-1]  # recorded before the exit was handed back
    assert result["type"] == "ssh.result"
    assert result["ref"] == 1
    assert result["result"]["exit_code"] == 3
    assert result["result"]["bytes"] == {"in": 3, "out": 6, "err": 5}
    assert "recording" not in result


async def test_a_denied_command_never_reaches_the_agent(db: Database, writer: AuditWriter) -> None:
    h = Harness(db, writer, "ssh", "exec")
    forwarded = await h.inspector.from_client(
        start(command="cd / && rm -rf /") + codec.encode(codec.INPUT, b"more")
    )
    assert forwarded == b""
    assert h.wakes == 1
    answer = decode(b"".join(h.inspector.take_synthetic()))
    assert h.inspector.finished
    assert answer[0][0] == codec.STDERR and b"no-rm-root" in answer[0][1]
    status = codec.parse_exit(answer[1][1])
    assert status.status == 126 and status.error and "no-rm-root" in status.error
    [event] = events(db)
    assert event["decision"]["result"] == "deny" and event["decision"]["rule"] == "no-rm-root"
    await h.inspector.finish("closed")
    assert len(events(db)) == 1  # no result for a command that never ran


async def test_exec_mode_cannot_open_a_shell(db: Database, writer: AuditWriter) -> None:
    h = Harness(db, writer, "ssh", "exec")
    assert await h.inspector.from_client(start(pty=codec.Pty())) == b""
    answer = decode(b"".join(h.inspector.take_synthetic()))
    assert b"connect mode" in answer[0][1]
    assert events(db)[0]["type"] == "ssh.session"


async def test_a_terminal_session_is_recorded_and_vouched_for(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "connect")
    await h.inspector.from_client(start(pty=codec.Pty("xterm", 90, 20)))
    await h.agent(codec.encode(codec.STDOUT, b"$ "))
    await h.inspector.from_client(codec.encode(codec.INPUT, b"echo hi\r"))
    await h.agent(codec.encode(codec.STDOUT, b"echo hi\r\nhi\r\n$ "))
    await h.inspector.from_client(codec.encode_window(120, 40))
    await h.agent(codec.encode_exit(codec.Exit(0)))
    trail = events(db)
    assert [e["type"] for e in trail] == ["ssh.session", "ssh.input", "ssh.result"]
    assert trail[1]["input"] == {"line": "echo hi"}
    recording = trail[2]["recording"]
    data = b"".join(h.pieces[i] for i in sorted(h.pieces))
    assert recording["sha256"] == hashlib.sha256(data).hexdigest()
    assert h.recorded == [3]
    kinds = [json.loads(line)[1] for line in data.decode().splitlines()[1:]]
    assert kinds == ["o", "o", "i", "r"]  # a line is kept once its echo is seen


async def test_a_shell_command_records_argv_and_workdir(db: Database, writer: AuditWriter) -> None:
    h = Harness(db, writer, "shell", "exec")
    await h.inspector.from_client(start(argv=("echo", ";rm -rf /")))
    event = events(db)[0]
    assert event["type"] == "shell.command"
    assert event["request"] == {
        "argv": ["echo", ";rm -rf /"],
        "workdir": "/srv/app",
        "run_as": {"mode": "agent", "uid": 0, "user": "root"},  # what the agent said at attach
    }
    assert event["decision"] == {"result": "allow"}


async def test_a_shell_result_records_the_account_the_agent_started_it_as(
    db: Database, writer: AuditWriter
) -> None:
    account = codec.RunAs("account", 1001, "deploy", account="deploy")
    h = Harness(db, writer, "shell", "exec", run_as="deploy", agent_run_as=account)
    assert await h.inspector.from_client(start(argv=("id", "-u")))
    await h.agent(codec.encode_exit(codec.Exit(0, run_as=account)))
    command, result = events(db)
    expected = {"mode": "account", "account": "deploy", "uid": 1001, "user": "deploy"}
    assert command["request"]["run_as"] == expected
    assert result["result"]["run_as"] == expected


@pytest.mark.parametrize(
    ("run_as", "reported", "says"),
    [
        ("agent", None, "did not say whose account"),
        ("deploy", ROOT_AGENT, "would run this command as its own user (uid 0, root)"),
        ("deploy", codec.RunAs("account", 1002, "other", account="other"), "run_as: deploy"),
    ],
    ids=["an older agent", "a stale policy", "another account"],
)
async def test_a_shell_command_whose_account_the_trail_cannot_vouch_for_never_runs(
    db: Database, writer: AuditWriter, run_as: str, reported: codec.RunAs | None, says: str
) -> None:
    h = Harness(db, writer, "shell", "exec", run_as=run_as, agent_run_as=reported)
    assert await h.inspector.from_client(start(argv=("touch", "/tmp/x"))) == b""
    [(_, stderr), (_, body)] = decode(b"".join(h.inspector.take_synthetic()))
    assert says in stderr.decode()
    assert codec.parse_exit(body).status == 255  # the gateway's failure, not a guardrail's
    [event] = events(db)
    assert event["decision"]["result"] == "deny" and event["decision"]["rule"] == "(run_as)"
    if reported is None:
        assert event["request"]["run_as"] == {
            "mode": "agent",
            "uid": None,
            "user": None,
            "error": "not reported by the agent",
        }


@pytest.mark.parametrize(
    "body",
    [
        b'{"command": ""}',
        b'{"argv": [""]}',
        b'{"subsystem": ""}',
        b'{"command": "id", "subsystem": ""}',
    ],
)
@pytest.mark.parametrize("mode", ["exec", "connect"])
async def test_an_empty_command_or_subsystem_never_reaches_the_agent(
    db: Database, writer: AuditWriter, body: bytes, mode: str
) -> None:
    """An SSH exec request without a command (or a subsystem request without a name) is a
    shell request to the target: its login shell would run what comes on stdin, unread."""
    h = Harness(db, writer, "ssh", mode)
    with pytest.raises(codec.ProtocolError, match=r"empty|name one|give one of"):
        await h.inspector.from_client(codec.encode(codec.START, body) + codec.encode(codec.EOF))
    assert events(db) == []


@pytest.mark.parametrize(
    "env",
    [{"LC_ALL": "zh_TW.BIG5"}, {"LANG": "ja_JP.SJIS"}, {"LC_CTYPE": "zh_TW"}, {"BASH_ENV": "/x"}],
)
@pytest.mark.parametrize("kind", ["ssh", "shell"])
async def test_an_environment_that_changes_how_the_command_reads_never_reaches_the_agent(
    db: Database, writer: AuditWriter, env: dict[str, str], kind: str
) -> None:
    """In Big5, `中\\"` is two characters and a closing quote; in UTF-8, as the guardrail reads
    it, an escaped quote: `echo "中\\" ; rm -rf /srv ; # "` is one echo here and an rm there."""
    h = Harness(db, writer, kind, "exec")
    command = 'echo "中\\" ; rm -rf /srv ; # "'
    assert await h.inspector.from_client(start(command=command, env=env)) == b""
    answer = decode(b"".join(h.inspector.take_synthetic()))
    assert codec.parse_exit(answer[-1][1]).status == 126
    [event] = events(db)
    assert event["decision"]["result"] == "deny" and event["decision"]["rule"] == "(env)"
    # A locale's name says why it was refused; any other variable's value may be a secret.
    locale = next(iter(env)).startswith(("LANG", "LC_"))
    assert event["request"]["env"] == (env if locale else dict.fromkeys(env, "****"))
    assert event["request"].get("masked", False) is not locale


async def test_a_utf8_locale_passes_and_is_recorded(db: Database, writer: AuditWriter) -> None:
    h = Harness(db, writer, "ssh", "exec")
    env = {"LANG": "en_US.UTF-8", "LC_ALL": "C.UTF-8", "LC_TIME": "C"}
    sent = start(command="date", env=env)
    assert await h.inspector.from_client(sent) == sent
    [event] = events(db)
    assert event["decision"] == {"result": "allow"}
    assert event["request"] == {"command": "date", "env": env}


async def test_input_before_start_ends_the_session(db: Database, writer: AuditWriter) -> None:
    h = Harness(db, writer, "ssh", "exec")
    with pytest.raises(codec.ProtocolError, match="begin with `start`"):
        await h.inspector.from_client(codec.encode(codec.INPUT, b"x"))
    with pytest.raises(codec.ProtocolError, match="unexpected message type"):
        await Harness(db, writer, "ssh", "exec").inspector.from_client(b"Z\x00\x00\x00\x00")


async def test_an_agent_that_leaves_without_an_exit_still_ends_the_command(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "exec")
    await h.inspector.from_client(start(argv=("sleep", "30")))
    [(tag, body)] = decode(b"".join(h.inspector.closing()))
    assert tag == codec.EXIT and codec.parse_exit(body).status == 255
    await h.inspector.finish("agent gone")
    result = events(db)[-1]
    assert result["type"] == "ssh.result"
    # No exit status came: none is recorded, the outcome is unknown and the reason given.
    assert result["result"]["error"] == "unknown" and "exit_code" not in result["result"]
    assert result["result"]["message"].endswith("agent gone")


# ---- a program on stdin ---------------------------------------------------------------------


async def test_a_program_on_stdin_is_recorded_before_anything_is_forwarded(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "shell", "exec")
    program = b"echo hello\nls -l\n"
    assert await h.inspector.from_client(start(argv=("sh",))) == b""
    assert await h.inspector.from_client(codec.encode(codec.INPUT, program[:5])) == b""
    assert events(db) == []  # nothing decided, nothing forwarded while the program arrives
    forwarded = await h.inspector.from_client(
        codec.encode(codec.INPUT, program[5:]) + codec.encode(codec.EOF)
    )
    [event] = events(db)  # committed before the bytes below go anywhere
    assert event["type"] == "shell.command"
    assert event["request"]["argv"] == ["sh"]
    stdin = event["request"]["stdin"]
    assert stdin["text"] == program.decode()
    assert stdin["sha256"] == hashlib.sha256(program).hexdigest()
    assert stdin["bytes"] == len(program)
    assert stdin["readers"] == [{"command": ["sh"], "language": "shell"}]
    messages = [(m.tag, bytes(m.body)) for m in codec.TermFramer.from_client().feed(forwarded)]
    assert [t for t, _ in messages] == [codec.START, codec.INPUT, codec.EOF]
    assert messages[1][1] == program
    await h.agent(codec.encode_exit(codec.Exit(0)))
    result = events(db)[-1]
    assert result["result"]["stdin"] == {"sha256": stdin["sha256"], "bytes": len(program)}


async def test_a_denied_program_on_stdin_never_reaches_the_agent(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "exec")
    sent = (
        start(argv=("sudo", "bash"))
        + codec.encode(codec.INPUT, b"cd /tmp\nrm -rf /\n")
        + codec.encode(codec.EOF)
    )
    assert await h.inspector.from_client(sent) == b""
    [event] = events(db)
    assert event["decision"]["result"] == "deny" and event["decision"]["rule"] == "no-rm-root"
    assert "rm -rf /" in event["request"]["stdin"]["text"]
    answer = decode(b"".join(h.inspector.take_synthetic()))
    assert codec.parse_exit(answer[-1][1]).status == 126
    assert b"program on stdin" in answer[0][1]


async def test_a_program_beyond_the_limit_is_refused(db: Database, writer: AuditWriter) -> None:
    from controlplane.relay.term.inspector import STDIN_LIMIT

    h = Harness(db, writer, "ssh", "exec")
    await h.inspector.from_client(start(argv=("python3",)))
    piece = b"#" * (64 * 1024)
    forwarded = b""
    for _ in range(STDIN_LIMIT // len(piece) + 1):
        forwarded += await h.inspector.from_client(codec.encode(codec.INPUT, piece))
    forwarded += await h.inspector.from_client(codec.encode(codec.EOF))
    assert forwarded == b""
    [event] = events(db)
    assert event["decision"]["result"] == "deny"
    assert event["request"]["stdin"]["truncated"] is True
    answer = decode(b"".join(h.inspector.take_synthetic()))
    error = codec.parse_exit(answer[-1][1]).error or ""
    assert str(STDIN_LIMIT) in error and "connect" in error


async def test_data_to_other_commands_streams_unheld(db: Database, writer: AuditWriter) -> None:
    h = Harness(db, writer, "ssh", "exec")
    first = start(argv=("tar", "x", "-C", "/srv"))
    assert await h.inspector.from_client(first) == first
    chunk = codec.encode(codec.INPUT, b"\0" * 1000)
    assert await h.inspector.from_client(chunk) == chunk  # forwarded at once
    [event] = events(db)
    assert "stdin" not in event["request"]


async def test_a_session_that_ends_while_its_program_arrives_is_recorded_as_not_run(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "exec")
    await h.inspector.from_client(start(argv=("bash",)) + codec.encode(codec.INPUT, b"ls\n"))
    await h.inspector.finish("the client left")
    [event] = events(db)
    assert event["decision"]["result"] == "deny"
    assert event["request"]["stdin"]["text"] == "ls\n"


async def test_exec_mode_refuses_an_interpreter_on_a_terminal(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "ssh", "exec")
    assert await h.inspector.from_client(start(argv=("python3",), pty=codec.Pty())) == b""
    [event] = events(db)
    assert event["decision"]["rule"] == "(mode)"
    assert "connect" in event["decision"]["reason"]


@pytest.mark.parametrize("argv", [("less", "/etc/hosts"), ("tmux",), ("top",)])
async def test_exec_mode_gives_no_terminal_to_any_command(
    db: Database, writer: AuditWriter, argv: tuple[str, ...]
) -> None:
    """`less`'s `!sh`, `tmux` and many more are shells once they have a terminal."""
    h = Harness(db, writer, "ssh", "exec")
    assert await h.inspector.from_client(start(argv=argv, pty=codec.Pty())) == b""
    answer = decode(b"".join(h.inspector.take_synthetic()))
    assert codec.parse_exit(answer[-1][1]).status == 126
    [event] = events(db)
    assert event["decision"]["rule"] == "(mode)"
    assert "on a terminal" in event["decision"]["reason"]
    connect = Harness(db, writer, "ssh", "connect")
    sent = start(argv=argv, pty=codec.Pty())
    assert await connect.inspector.from_client(sent) == sent


async def test_a_client_whose_program_stays_open_is_told_why_nothing_runs(
    db: Database, writer: AuditWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from controlplane.relay.term import inspector as term

    monkeypatch.setattr(term, "HOLD_NOTICE_AFTER", 0.05)
    h = Harness(db, writer, "shell", "exec")
    await h.inspector.from_client(start(argv=("sh",)) + codec.encode(codec.INPUT, b"ls\n"))
    await asyncio.sleep(0.2)
    assert h.wakes == 1
    [(tag, body)] = decode(b"".join(h.inspector.take_synthetic()))
    assert tag == codec.STDERR and b"sh reads its program from stdin" in body
    assert not h.inspector.finished  # a notice, not the end
    forwarded = await h.inspector.from_client(codec.encode(codec.EOF))
    assert forwarded.startswith(start(argv=("sh",)))


async def test_a_text_is_read_as_the_connections_shell_runs_it(
    db: Database, writer: AuditWriter
) -> None:
    """With `shell: [python3, -c]`, a text is Python: one that reads stdin as code is held."""
    h = Harness(db, writer, "shell", "exec", shell=("python3", "-c"))
    text = "import sys; exec(sys.stdin.read())"
    assert await h.inspector.from_client(start(command=text)) == b""  # held for its stdin
    h2 = Harness(db, writer, "shell", "exec")
    sent = start(command="exec sh")  # under /bin/sh -c, `exec sh` reads stdin
    assert await h2.inspector.from_client(sent) == b""


async def test_a_lost_agent_leaves_a_result_saying_the_outcome_is_unknown(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, "shell", "exec")
    assert await h.inspector.from_client(start(argv=("sleep", "30")))
    await h.inspector.agent_lost()
    await h.inspector.finish("agent_lost")  # no second result
    results = [e for e in events(db) if e["type"] == "shell.result"]
    assert len(results) == 1
    assert results[0]["result"]["error"] == "unknown"
    assert results[0]["result"]["message"] == "agent lost before the result arrived"

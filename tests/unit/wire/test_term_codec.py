"""The terminal-stream codec: what the CLI, the control plane and the agent all rely on."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.term import codec

names = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20)
sizes = st.integers(1, 65535)
ptys = st.builds(codec.Pty, names, sizes, sizes)
envs = st.dictionaries(names, st.text(max_size=20), max_size=4)
starts = st.one_of(
    st.builds(
        codec.Start,
        argv=st.lists(st.text(max_size=20), min_size=1, max_size=5).filter(" ".join).map(tuple),
        pty=st.none() | ptys,
        env=envs,
    ),
    st.builds(
        codec.Start, command=st.text(min_size=1, max_size=50), pty=st.none() | ptys, env=envs
    ),
    st.builds(codec.Start, subsystem=names.filter(bool), env=envs),
    st.builds(codec.Start, pty=ptys, env=envs),  # a login shell
)
run_as = st.builds(
    codec.RunAs,
    st.sampled_from(["agent", "account"]),
    st.none() | st.integers(0, 2**32 - 1),
    st.none() | names,
    st.none() | names,
    st.none() | st.text(),
)
exits = st.builds(
    codec.Exit,
    st.integers(-(2**31), 2**31),
    st.none() | names,
    st.none() | st.text(),
    st.none() | run_as,
)


def one(data: bytes, framer: codec.TermFramer | None = None) -> codec.Message:
    [message] = (framer or codec.TermFramer.from_client()).feed(data)
    return message


@given(starts)
def test_start_round_trips(start: codec.Start) -> None:
    message = one(codec.encode_start(start))
    assert message.tag == codec.START
    assert codec.parse_start(message.body) == start


@given(exits)
def test_exit_round_trips(exit_: codec.Exit) -> None:
    message = one(codec.encode_exit(exit_), codec.TermFramer.from_target())
    assert codec.parse_exit(message.body) == exit_


@given(sizes, sizes)
def test_window_round_trips(cols: int, rows: int) -> None:
    assert codec.parse_window(one(codec.encode_window(cols, rows)).body) == (cols, rows)


def test_window_sizes_are_clamped_to_what_the_message_holds() -> None:
    assert codec.parse_window(one(codec.encode_window(0, 100_000)).body) == (1, 65535)


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_messages_survive_any_cut_into_frames(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(codec.encode(codec.INPUT, body) for body in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer = codec.TermFramer.from_client()
    seen = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        seen += [bytes(m.body) for m in framer.feed(stream[start:end])]
    assert seen == bodies
    assert not framer.incomplete


def test_partial_message_waits_for_the_rest() -> None:
    data = codec.encode(codec.STDOUT, b"hello")
    framer = codec.TermFramer.from_target()
    for byte in data[:-1]:
        assert framer.feed(bytes([byte])) == []
        assert framer.incomplete
    [message] = framer.feed(data[-1:])
    assert (message.tag, bytes(message.body), bytes(message.raw)) == (codec.STDOUT, b"hello", data)
    assert not framer.incomplete


def test_empty_bodies_frame_on_their_own() -> None:
    messages = codec.TermFramer.from_client().feed(codec.encode(codec.EOF) * 2)
    assert [(m.tag, bytes(m.body)) for m in messages] == [(codec.EOF, b"")] * 2


@pytest.mark.parametrize(
    ("framer", "tag"),
    [
        (codec.TermFramer.from_client(), codec.STDOUT),  # a target message from the client
        (codec.TermFramer.from_target(), codec.INPUT),  # a client message from the target
        (codec.TermFramer.from_client(), 0),
        (codec.TermFramer.from_client(), ord("Q")),  # PostgreSQL, not a terminal stream
    ],
)
def test_message_of_the_wrong_direction_or_unknown_is_refused(
    framer: codec.TermFramer, tag: int
) -> None:
    with pytest.raises(codec.ProtocolError, match="unexpected message type"):
        framer.feed(codec.encode(tag, b"x"))


def test_oversized_message_is_refused_from_its_header() -> None:
    header = struct.pack("!BI", codec.INPUT, codec.MAX_BODY + 1)
    with pytest.raises(codec.ProtocolError, match="longer than"):
        codec.TermFramer.from_client().feed(header)
    at_limit = struct.pack("!BI", codec.INPUT, codec.MAX_BODY)
    assert codec.TermFramer.from_client().feed(at_limit) == []  # waits for its body


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"argv": "ls"}', "argv must be a list of strings"),
        (b'{"argv": [1]}', "argv must be a list of strings"),
        (b'{"argv": ["ls"], "command": "ls"}', "give one of argv, command and subsystem"),
        (b'{"command": "ls", "subsystem": "sftp"}', "give one of argv, command and subsystem"),
        (b'{"command": 1}', "command must be a string"),
        # an SSH exec request without a command is a login shell reading stdin
        (b'{"command": ""}', "the command is empty"),
        (b'{"command": "", "pty": {}}', "the command is empty"),
        (b'{"argv": [""]}', "the command is empty"),
        (b'{"argv": [""], "pty": {}}', "the command is empty"),
        (b'{"subsystem": ""}', "subsystem must name one"),
        (b'{"command": "ls", "subsystem": ""}', "give one of argv, command and subsystem"),
        (b'{"argv": ["ls"], "subsystem": ""}', "give one of argv, command and subsystem"),
        (b"{}", "a login shell needs a pty"),
        (b'{"pty": []}', "pty must be an object"),
        (b'{"pty": {"cols": 0}}', "sizes from 1 to 65535"),
        (b'{"pty": {"rows": 65536}}', "sizes from 1 to 65535"),
        (b'{"pty": {"cols": true}}', "sizes from 1 to 65535"),
        (b'{"pty": {"term": 5}}', "needs a term name"),
        (b'{"argv": ["ls"], "env": {"A": 1}}', "env must map names to strings"),
        (b'{"argv": ["ls"], "env": []}', "env must map names to strings"),
    ],
)
def test_malformed_start_is_refused(body: bytes, problem: str) -> None:
    with pytest.raises(codec.ProtocolError, match=problem):
        codec.parse_start(body)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "not JSON"),
        (b"{}", "status must be an integer"),
        (b'{"status": "0"}', "status must be an integer"),
        (b'{"status": true}', "status must be an integer"),
        (b'{"status": 1, "error": 2}', "error must be a string"),
        (b'{"status": 1, "run_as": 2}', "run_as must be an object"),
        (b'{"status": 1, "run_as": {"mode": "agent", "uid": -1}}', "non-negative"),
        (b'{"status": 1, "run_as": {"mode": "agent", "uid": true}}', "non-negative"),
    ],
)
def test_malformed_exit_is_refused(body: bytes, problem: str) -> None:
    with pytest.raises(codec.ProtocolError, match=problem):
        codec.parse_exit(body)


def test_an_older_agents_run_as_name_still_parses_without_a_uid() -> None:
    agent = codec.parse_exit(b'{"status": 0, "run_as": "agent"}').run_as
    assert agent == codec.RunAs("agent")
    assert agent.as_event() == {"mode": "agent", "uid": None, "user": None}
    named = codec.parse_exit(b'{"status": 0, "run_as": "deploy"}').run_as
    assert named == codec.RunAs("account", user="deploy", account="deploy")


def test_start_defaults_fill_a_sparse_pty() -> None:
    start = codec.parse_start(json.dumps({"pty": {}}).encode())
    assert start.pty == codec.Pty()  # the same defaults as a Pty built in code
    assert start.interactive


def test_command_line_is_what_an_ssh_client_sends() -> None:
    assert codec.Start(argv=("uname", "-a")).command_line() == "uname -a"
    assert codec.Start(command="ls 'a b'").command_line() == "ls 'a b'"


@pytest.mark.parametrize("body", [b"4", b"4\x00\x00\x00\x00", b""])
def test_window_of_the_wrong_size_is_refused(body: bytes) -> None:
    with pytest.raises(codec.ProtocolError, match="expected 4 bytes"):
        codec.parse_window(body)


def test_signal_names_are_an_allow_list() -> None:
    assert codec.parse_signal(b"INT") == "INT"
    for bad in (b"SIGINT", b"int", b"STOP", b"\xff"):
        with pytest.raises(codec.ProtocolError, match="is not one of"):
            codec.parse_signal(bad)

"""The policy file through libyaml's parser: lines in errors stay right, and a big file is fast."""

from __future__ import annotations

import gc
import time

import pytest
import yaml

from controlplane.policy import document
from controlplane.policy.document import PolicyError, parse_policy


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    return caught.value.problems


def fleet(count: int) -> str:
    lines = ["connections:"]
    for i in range(count):
        lines += [
            f"  - name: pg-{i:05d}",
            "    type: postgres",
            f"    agent: edge-{i:05d}",
            "    target: {host: 127.0.0.1, port: 5432, database: app, user: app}",
            "    secret: {password: env:PG_PASSWORD}",
        ]
    return "\n".join(lines) + "\n"


def test_libyaml_composes_the_nodes_when_pyyaml_has_it() -> None:
    assert vars(document)["_Composer"] is yaml.CSafeLoader


def test_an_error_deep_in_a_big_file_names_its_line() -> None:
    text = fleet(2000).replace("port: 5432", "port: '5432'", 1)
    text = text.replace("name: pg-01500", "name: pg-01500\n    tagret: {}")
    assert problems(text) == [
        "gatehouse.yaml:5: connections[0] (pg-00000).target.port: value is not a valid integer",
        "gatehouse.yaml:7503: unknown key 'tagret' in connections[1500] (pg-01500);"
        " expected one of: agent, audit, guardrails, masking, name, secret, target, type",
    ]


BAD = [
    "connections:\n  - name: pg\n    type: postgres\n    agent: a\n    tagret: {}\n",
    "connections:\n  - name: pg\n    name: pg2\n    type: postgres\n",
    "connections:\n  - &c {name: pg, type: postgres, agent: a}\n  - *c\n",
    "connections:\n  - <<: {name: pg, type: postgres}\n    agent: a\n    target: 5\n",
    "guardrails:\n  - name: g\n    deny_patterns: ['(']\n",
    "a: [1, 2\nb: 3\n",
    "a: b\n---\nc: d\n",
    "a: !!python/object x\n",
    "- 1\n- 2\n",
]


@pytest.mark.parametrize("text", BAD)
def test_both_parsers_name_the_same_lines(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = problems(text)
    monkeypatch.setattr(document, "_Composer", yaml.SafeLoader)
    slow = problems(text)
    assert [p.split(": ")[0] for p in fast] == [p.split(": ")[0] for p in slow]
    if not any("invalid YAML" in p for p in slow):  # libyaml words syntax errors its own way
        assert fast == slow


def test_a_tab_indentation_is_named_on_its_own_line() -> None:
    # PyYAML's own scanner refused the (valid) tab after "a:" on line 1; libyaml finds the tab
    # that indents line 2, which is the one to fix.
    (problem,) = problems("a:\tb\n\tc: d\n")
    assert problem.startswith("gatehouse.yaml:2: invalid YAML: found a tab character")


def test_a_bad_character_after_multibyte_text_names_its_line() -> None:
    text = "connections:\n  - name: pg  # é é é é é é é é é é é é\n    type: \x07\n"
    (problem,) = problems(text)
    assert problem.startswith("gatehouse.yaml:3: invalid YAML: unacceptable character #x0007")


def test_a_lone_surrogate_is_refused_with_its_line() -> None:
    assert problems("connections: []\nguardrails: ['\ud800']\n") == [
        "gatehouse.yaml:2: invalid YAML: unacceptable character #xd800"
    ]


def test_too_deep_nesting_is_refused_not_a_crash() -> None:
    (problem,) = problems("connections: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert problem.startswith("gatehouse.yaml:1: invalid YAML: ")


def test_ten_thousand_connections_parse_in_seconds() -> None:
    text = fleet(10_000)
    started = time.process_time()
    parsed = parse_policy(text)
    assert len(parsed.connections) == 10_000
    assert time.process_time() - started < 20  # the pure-Python parser alone took ~15 s


def test_the_cycle_collector_is_paused_while_parsing_and_restored_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    during: list[bool] = []
    compose = yaml.compose

    def spy(text: str, Loader: type[yaml.SafeLoader]) -> yaml.Node | None:  # noqa: N803
        during.append(gc.isenabled())
        return compose(text, Loader=Loader)

    monkeypatch.setattr(yaml, "compose", spy)
    assert gc.isenabled()
    parse_policy(fleet(3))
    problems("connections: [{name: x}]\n")
    assert during == [False, False]
    assert gc.isenabled()

    gc.disable()  # whoever turned it off keeps it off
    try:
        parse_policy(fleet(1))
        assert not gc.isenabled()
    finally:
        gc.enable()

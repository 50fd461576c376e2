"""The policy file parser: typed result for a good file, FILE:LINE errors for a bad one."""

import json
import textwrap
from datetime import timedelta

import pytest
import yaml

from controlplane.policy.document import (
    AccessRule,
    Guardrail,
    HttpSecret,
    HttpTarget,
    MaskingRule,
    PolicyDocument,
    PolicyError,
    PostgresConnection,
    PostgresTarget,
    Review,
    ShellConnection,
    ShellTarget,
    SshConnection,
    SshTarget,
    parse_policy,
    to_json,
)

EXAMPLE = """\
connections:
  - name: pg-prod
    type: postgres            # postgres | mysql | ssh | shell | http
    agent: vpc-eu-1
    audit: strict             # strict (default) | async
    target: {host: db.internal, port: 5432, database: app, user: app_rw}
    secret: {password: env:PG_PROD_PASSWORD}      # env:NAME | file:/path
    guardrails: [no-destructive]
    masking: [pii]
  - name: web-1
    type: ssh
    agent: vpc-eu-1
    target: {host: 10.0.3.7, port: 22, user: deploy, known_hosts: 'ssh-ed25519 AAAA…'}
    secret: {private_key: file:/etc/gatehouse/keys/deploy}
    guardrails: [no-force-push]
  - name: ops
    type: shell
    agent: vpc-eu-1
    target: {run_as: svc-ops, workdir: /srv/app, env: {KUBECONFIG: /etc/kube/config}, timeout: 300}
guardrails:
  - name: no-force-push
    deny_commands: ['git push --force*', 'rm -rf /*']   # globs on the joined argv
  - name: no-destructive
    deny_statements: [DROP, TRUNCATE, ALTER]
    deny_unbounded: [DELETE, UPDATE]              # without WHERE
    deny_patterns: ['(?i)pg_read_file']
masking:
  - name: pii
    columns: [email, phone, ssn]
    detectors: [email, credit_card, phone, secret]
access:
  - name: dba
    groups: [dba]
    connections: ['pg-*']
    modes: [exec, connect]
  - name: oncall-prod
    groups: [oncall]
    connections: [pg-prod]
    modes: [exec]
    review: {groups: [security], ttl: 1h}
"""

PG = """\
connections:
  - name: pg-prod
    type: postgres
    agent: vpc-eu-1
    target:
      host: db.internal
      port: 5432
      database: app
      user: app_rw
"""


def problems(text: str, filename: str = "gatehouse.yaml") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, filename)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def test_full_example_parses_to_typed_models() -> None:
    doc = parse_policy(EXAMPLE)

    pg, ssh, shell = doc.connections
    assert isinstance(pg, PostgresConnection)
    assert pg.target == PostgresTarget(host="db.internal", port=5432, database="app", user="app_rw")
    assert isinstance(pg.target.port, int)
    assert pg.target.sslmode == "prefer"
    assert pg.audit == "strict"
    assert pg.secret == {"password": "env:PG_PROD_PASSWORD"}
    assert (pg.guardrails, pg.masking) == (["no-destructive"], ["pii"])

    assert isinstance(ssh, SshConnection)
    assert isinstance(ssh.target, SshTarget)
    assert ssh.target.known_hosts == "ssh-ed25519 AAAA…"
    assert ssh.secret == {"private_key": "file:/etc/gatehouse/keys/deploy"}

    assert isinstance(shell, ShellConnection)
    assert shell.target == ShellTarget(
        run_as="svc-ops", workdir="/srv/app", env={"KUBECONFIG": "/etc/kube/config"}, timeout=300
    )
    assert shell.secret == {}

    assert doc.guardrails[1] == Guardrail(
        name="no-destructive",
        deny_statements=["DROP", "TRUNCATE", "ALTER"],
        deny_unbounded=["DELETE", "UPDATE"],
        deny_patterns=["(?i)pg_read_file"],
    )
    assert doc.guardrails[0].deny_commands == ["git push --force*", "rm -rf /*"]
    assert doc.masking == [
        MaskingRule(
            name="pii",
            columns=["email", "phone", "ssn"],
            detectors=["email", "credit_card", "phone", "secret"],
        )
    ]
    assert doc.access[0] == AccessRule(
        name="dba", groups=["dba"], connections=["pg-*"], modes=["exec", "connect"]
    )
    assert doc.access[1].review == Review(groups=["security"], ttl=timedelta(hours=1))

    assert doc.connection("web-1") is ssh
    assert doc.connection("nope") is None


def test_to_json_round_trips_with_ttl_as_text() -> None:
    doc = parse_policy(EXAMPLE)
    data = to_json(doc)

    assert data["access"][1]["review"]["ttl"] == "1h"
    assert json.loads(json.dumps(data)) == data
    assert PolicyDocument.model_validate(data) == doc
    assert parse_policy(yaml.safe_dump(data)) == doc


@pytest.mark.parametrize(
    ("written", "seconds", "shown"),
    [("90s", 90, "90s"), ("30m", 1800, "30m"), ("8h", 28800, "8h"), ("1d", 86400, "1d")],
)
def test_ttl_forms(written: str, seconds: int, shown: str) -> None:
    review = Review.model_validate({"groups": ["g"], "ttl": written})
    assert review.ttl == timedelta(seconds=seconds)
    assert review.model_dump(mode="json")["ttl"] == shown


def test_unknown_key_names_key_and_line_exactly() -> None:
    text = EXAMPLE.replace("    target: {host: db.internal", "    tagret: {host: db.internal")

    assert problems(text) == [
        "gatehouse.yaml:2: connections[0] (pg-prod): missing required key 'target'",
        "gatehouse.yaml:6: unknown key 'tagret' in connections[0] (pg-prod); expected one of:"
        " agent, audit, guardrails, masking, name, secret, target, type",
    ]


def test_unknown_key_nested_in_target() -> None:
    text = PG + "      sslmod: require\n"

    assert problems(text, "prod.yaml") == [
        "prod.yaml:10: unknown key 'sslmod' in connections[0] (pg-prod).target; expected one of:"
        " database, host, port, sslmode, sslrootcert, user"
    ]


def test_unknown_top_level_key() -> None:
    assert problems("connections: []\npolicies: []\n") == [
        "gatehouse.yaml:2: unknown key 'policies' at the top level;"
        " expected one of: access, connections, guardrails, masking"
    ]


def test_missing_required_key_reports_the_mapping_line() -> None:
    text = PG.replace("      user: app_rw\n", "")

    assert problems(text) == [
        "gatehouse.yaml:6: connections[0] (pg-prod).target: missing required key 'user'"
    ]


def test_wrong_type_for_port() -> None:
    text = PG.replace("port: 5432", "port: five")

    assert problems(text) == [
        "gatehouse.yaml:7: connections[0] (pg-prod).target.port: value is not a valid integer"
    ]


@pytest.mark.parametrize("port", ["true", "'5432'", "54.32"])
def test_port_takes_only_a_yaml_integer(port: str) -> None:
    (problem,) = problems(PG.replace("port: 5432", f"port: {port}"))
    assert problem.endswith(".target.port: value is not a valid integer")


def test_literal_secret_is_refused_without_echoing_it() -> None:
    text = PG + "    secret: {password: hunter2}\n"

    (problem,) = problems(text)
    assert problem.startswith("gatehouse.yaml:10: connections[0] (pg-prod).secret.password: ")
    assert "env:NAME" in problem
    assert "file:/absolute/path" in problem
    assert "hunter2" not in problem


@pytest.mark.parametrize("ref", ["env:1BAD", "env:", "file:relative/path", "12345"])
def test_malformed_secret_references(ref: str) -> None:
    (problem,) = problems(PG + f"    secret: {{password: '{ref}'}}\n")
    assert "gatehouse.yaml:10: connections[0] (pg-prod).secret.password: " in problem


def test_secret_key_must_fit_the_connection_type() -> None:
    text = PG + "    secret: {private_key: file:/k}\n"

    assert problems(text) == [
        "gatehouse.yaml:10: connections[0] (pg-prod).secret.private_key:"
        " unknown secret 'private_key' for a postgres connection; expected one of: password"
    ]


def test_bad_regex_is_named() -> None:
    text = "guardrails:\n  - name: g\n    deny_patterns: ['ok', 'pg_(read']\n"

    assert problems(text) == [
        "gatehouse.yaml:3: guardrails[0] (g).deny_patterns[1]: invalid regular expression"
        " 'pg_(read': missing ), unterminated subpattern at position 3"
    ]


def test_duplicate_connection_names_reported_at_the_second() -> None:
    second = PG.split("\n", 1)[1].replace("port: 5432", "port: 5433")
    text = PG + second

    assert problems(text) == [
        "gatehouse.yaml:10: connections[1] (pg-prod).name:"
        " duplicate connection name 'pg-prod' (first defined on line 2)"
    ]


def test_duplicate_yaml_key_is_refused() -> None:
    text = PG.replace("      user: app_rw\n", "      user: app_rw\n      port: 6432\n")

    assert problems(text) == [
        "gatehouse.yaml:10: duplicate key 'port' in connections[0] (pg-prod).target"
        " (first on line 7)"
    ]


def test_merge_keys_may_be_overridden() -> None:
    text = textwrap.dedent(
        """\
        connections:
          - name: a
            type: postgres
            agent: x
            target: &pg {host: h, user: u, database: d}
          - name: b
            type: postgres
            agent: x
            target: {<<: *pg, host: h2}
        """
    )
    doc = parse_policy(text)
    assert doc.connections[1].target == PostgresTarget(host="h2", user="u", database="d")


def test_reference_to_undefined_guardrail() -> None:
    text = PG + "    guardrails: [no-destructiv]\nguardrails:\n  - name: no-destructive\n"

    assert problems(text) == [
        "gatehouse.yaml:10: connections[0] (pg-prod).guardrails[0]: connection 'pg-prod' refers"
        " to undefined guardrail 'no-destructiv' (defined guardrails: no-destructive)"
    ]


def test_reference_to_undefined_masking_rule() -> None:
    (problem,) = problems(PG + "    masking: [pii]\n")
    assert "undefined masking rule 'pii' (defined masking rules: none)" in problem


def test_several_problems_reported_at_once_in_line_order() -> None:
    text = (
        EXAMPLE.replace("ttl: 1h", "ttl: an hour")
        .replace("port: 5432", "port: five")
        .replace("deny_unbounded: [DELETE, UPDATE]", "deny_unbounded: [DELETE, INSERT]")
        .replace("type: shell", "type: bash")
    )

    found = problems(text)
    assert [p.split(":")[1] for p in found] == ["6", "17", "25", "40"]
    assert found[1] == (
        "gatehouse.yaml:17: connections[2] (ops).type: unknown type 'bash';"
        " expected one of: http, mysql, postgres, shell, ssh"
    )
    assert "deny_unbounded[1]: invalid value 'INSERT'; expected one of: DELETE, UPDATE" in found[2]
    assert "review.ttl: invalid duration 'an hour'" in found[3]


def test_missing_type_is_reported_once_not_per_target_model() -> None:
    text = "connections:\n  - name: x\n    agent: a\n    target: {host: h}\n"

    assert problems(text) == [
        "gatehouse.yaml:2: connections[0] (x): missing required key 'type'"
        " (one of: http, mysql, postgres, shell, ssh)"
    ]


@pytest.mark.parametrize("text", ["", "   \n", "# nothing yet\n", "---\n"])
def test_empty_file_is_an_empty_valid_document(text: str) -> None:
    assert parse_policy(text) == PolicyDocument()


def test_empty_sections_are_empty_lists() -> None:
    assert parse_policy("connections:\nguardrails:\n") == PolicyDocument()


def test_yaml_syntax_error_has_a_line() -> None:
    (problem,) = problems("connections:\n  - name: a\n    type: postgres\n   bad: [\n")
    assert problem.startswith("gatehouse.yaml:4: invalid YAML: ")


def test_top_level_must_be_a_mapping() -> None:
    (problem,) = problems("- a\n- b\n")
    assert problem.startswith("gatehouse.yaml:1: the top level must be a mapping")


def test_python_tags_are_refused() -> None:
    (problem,) = problems("connections: !!python/object/apply:os.system ['true']\n")
    assert problem.startswith("gatehouse.yaml:1: invalid YAML: could not determine a constructor")


def test_alias_bomb_is_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        prev, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    (problem,) = problems("\n".join(lines) + "\n")
    assert "expands through aliases" in problem


def test_http_target_refuses_inline_credentials() -> None:
    text = textwrap.dedent(
        """\
        connections:
          - name: api
            type: http
            agent: a
            target:
              url: https://user:pw@api.internal
              headers: {Authorization: Bearer abc}
        """
    )
    found = problems(text)
    assert [p.split(":")[1] for p in found] == ["6", "7"]
    assert not any("pw@" in p or "Bearer" in p for p in found)
    assert HttpTarget(url="https://api.internal").headers == {}


def test_http_secret_forms_flatten_for_the_agent() -> None:
    text = textwrap.dedent(
        """\
        connections:
          - name: api
            type: http
            agent: a
            target: {url: 'https://api.internal:8443', tls: {server_name: api.internal}}
            secret: {basic: {user: alice, password: env:PW}, headers: {X-Api-Key: env:KEY}}
        """
    )
    (conn,) = parse_policy(text).connections
    assert isinstance(conn.secret, HttpSecret)
    assert conn.secret.flat() == {
        "basic": "env:PW",
        "basic_user": "alice",
        "header:X-Api-Key": "env:KEY",
    }


def test_http_secret_refuses_literals_and_two_forms() -> None:
    text = textwrap.dedent(
        """\
        connections:
          - name: api
            type: http
            agent: a
            target: {url: 'https://api.internal'}
            secret: {bearer: hunter2, basic: {user: a, password: env:PW}}
        """
    )
    found = problems(text)
    assert found and not any("hunter2" in p for p in found)


def test_model_refuses_duplicates_when_built_in_code() -> None:
    rule = Guardrail(name="g")
    with pytest.raises(ValueError, match="duplicate guardrail name 'g'"):
        PolicyDocument(guardrails=[rule, rule])


SHELL_CONNECTION = """\
connections:
  - name: ops
    type: shell
    agent: a
    target: {{workdir: /srv{extra}}}
"""


def test_a_shell_connection_must_say_whose_account_runs_its_commands() -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(SHELL_CONNECTION.format(extra=""))
    message = str(raised.value)
    assert "gatehouse.yaml:5" in message and "needs run_as" in message
    assert "run_as: agent" in message and "secrets" in message
    explicit = parse_policy(SHELL_CONNECTION.format(extra=", run_as: agent"))
    assert isinstance(explicit.connections[0].target, ShellTarget)
    assert explicit.connections[0].target.run_as == "agent"


@pytest.mark.parametrize(
    ("run_as", "expected"),
    [("root", "root can read every secret"), ("'a b'", "is not an account name")],
)
def test_run_as_names_an_unprivileged_account(run_as: str, expected: str) -> None:
    with pytest.raises(PolicyError, match=expected):
        parse_policy(SHELL_CONNECTION.format(extra=f", run_as: {run_as}"))


def test_a_stored_document_without_run_as_still_loads() -> None:
    """Validated again from the store, an older document loads; its agent refuses."""
    document = PolicyDocument.model_validate(
        {"connections": [{"name": "ops", "type": "shell", "agent": "a", "target": {}}]}
    )
    assert isinstance(document.connections[0].target, ShellTarget)
    assert document.connections[0].target.run_as is None

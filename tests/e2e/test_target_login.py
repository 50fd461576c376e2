"""The agent's login to the target: TLS as libpq's sslmode says, and every password method."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.certs import make_server_cert
from devenv.postgres import PostgresServer, start_postgres
from tests.e2e.conftest import AGENT, PG_PASSWORD, POLICY, Stack

CONNECTION = """\
  - name: {name}
    type: postgres
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: {sslmode}{extra}}}
    secret: {{password: env:PG_PASSWORD}}
"""


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[dict[str, PostgresServer]]:
    cert = make_server_cert(tmp_path / "tls", ["127.0.0.1", "localhost"])
    roles, databases = {"app": PG_PASSWORD}, {"app": "app"}
    servers = {
        "tls": start_postgres(
            tmp_path / "tls-pg", tls=(cert.cert, cert.key), roles=roles, databases=databases
        ),
        "md5": start_postgres(
            tmp_path / "md5-pg", password_encryption="md5", roles=roles, databases=databases
        ),
        "password": start_postgres(
            tmp_path / "pw-pg", auth_method="password", roles=roles, databases=databases
        ),
    }
    (tmp_path / "ca.crt").write_bytes(cert.ca.read_bytes())
    (tmp_path / "other-ca.crt").write_bytes(
        make_server_cert(tmp_path / "other", ["127.0.0.1"], "another CA").ca.read_bytes()
    )
    yield servers
    for server in servers.values():
        server.stop()


def test_agent_logs_in_over_tls_and_with_every_password_method(
    own_stack: Stack, clusters: dict[str, PostgresServer], tmp_path: Path
) -> None:
    def connection(name: str, server: PostgresServer, sslmode: str, extra: str = "") -> str:
        return CONNECTION.format(
            name=name, agent=AGENT, port=server.port, sslmode=sslmode, extra=extra
        )

    tls, ca, other_ca = clusters["tls"], tmp_path / "ca.crt", tmp_path / "other-ca.crt"
    policy = POLICY.format(agent=AGENT, port=own_stack.pg.port) + "".join(
        [
            connection("tls-full", tls, "verify-full", f", sslrootcert: {ca}"),
            connection("tls-wrong-ca", tls, "verify-full", f", sslrootcert: {other_ca}"),
            connection("tls-require", tls, "require"),
            connection("plain-require", clusters["md5"], "require"),
            connection("md5", clusters["md5"], "disable"),
            connection("cleartext", clusters["password"], "disable"),
        ]
    )
    applied = own_stack.apply(policy)
    assert applied.returncode == 0, applied.stderr

    in_tls = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
    for name in ("tls-full", "tls-require"):
        result = own_stack.cli("exec", name, "-c", in_tls, "-o", "json")
        assert result.returncode == 0, result.stderr
        assert '"rows": [\n    [\n      true' in result.stdout, name

    wrong = own_stack.cli("exec", "tls-wrong-ca", "-c", "select 1")
    assert wrong.returncode == 1
    assert "certificate verify failed" in wrong.stderr

    plain = own_stack.cli("exec", "plain-require", "-c", "select 1")
    assert plain.returncode == 1
    assert "does not offer TLS" in plain.stderr

    for name in ("md5", "cleartext"):
        result = own_stack.cli("exec", name, "-c", "select current_user")
        assert result.returncode == 0, (name, result.stderr)
        assert "app" in result.stdout

    assert PG_PASSWORD not in own_stack.cli("audit", "export").stdout
    assert PG_PASSWORD not in own_stack.agent.log()

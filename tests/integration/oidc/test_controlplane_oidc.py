"""A person logged in with OIDC runs a statement; the event carries the identity the control
plane validated itself (subject, e-mail, groups from the provider's signed token)."""

from __future__ import annotations

import json
from pathlib import Path

from cli.login import TokenSet
from devenv.oidc import AUDIENCE, OidcProvider
from devenv.postgres import start_postgres
from devenv.stack import ControlPlane, enroll_agent, gatehouse

POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: vpc-1
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
access:
  - name: dba
    groups: [dba]
    connections: [pg]
    modes: [exec]
"""


def test_oidc_user_is_recorded_on_the_events(
    tmp_path: Path, oidc: OidcProvider, alice: TokenSet
) -> None:
    pg = start_postgres(tmp_path / "pg", roles={"app": "pw"}, databases={"app": "app"})
    controlplane = ControlPlane.create(
        tmp_path / "cp",
        env={"GATEHOUSE_OIDC_ISSUER": oidc.issuer, "GATEHOUSE_OIDC_AUDIENCE": AUDIENCE},
    )
    controlplane.start_and_wait()
    agent = None
    try:
        agent = enroll_agent(controlplane, "vpc-1", tmp_path / "agent", env={"PG_PASSWORD": "pw"})
        (tmp_path / "gatehouse.yaml").write_text(POLICY.format(port=pg.port))
        applied = gatehouse(
            ["admin", "apply", "-f", str(tmp_path / "gatehouse.yaml")], env=controlplane.cli_env
        )
        assert applied.returncode == 0, applied.stderr

        as_alice = {**controlplane.cli_env, "GATEHOUSE_TOKEN": alice.access_token}
        result = gatehouse(["exec", "pg", "-c", "select 'as alice'"], env=as_alice)
        assert result.returncode == 0, result.stderr

        forged = alice.access_token[:-4] + ("AAAA" if alice.access_token[-4:] != "AAAA" else "BBBB")
        refused = gatehouse(
            ["exec", "pg", "-c", "select 1"], env={**as_alice, "GATEHOUSE_TOKEN": forged}
        )
        assert refused.returncode == 1
        assert "signature" in refused.stderr
        assert forged not in refused.stderr

        export = gatehouse(["audit", "export", "--types", "db.query"], env=controlplane.cli_env)
        (event,) = [json.loads(line) for line in export.stdout.splitlines()]
        assert event["request"]["statement"] == "select 'as alice'"
        assert event["user"]["email"] == "alice@example.com"
        assert event["user"]["groups"] == ["dba"]
        assert alice.access_token not in export.stdout
    finally:
        if agent is not None:
            agent.stop()
        controlplane.stop()
        pg.stop()

"""Settings layering: flag > GATEHOUSE_* > config file > default, *_FILE secrets, clear errors."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from agent.settings import AgentSettings
from cli.config import ConfigError, load
from controlplane.settings import Settings
from devenv.stack import GATEHOUSE


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_given() -> None:
    settings = load(Settings, flags={}, env={})
    assert settings.grpc_listen == "127.0.0.1:8443"
    assert settings.checkpoint_every == 1000
    assert settings.min_retention == timedelta(days=30)
    assert settings.database_url is None


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    config = write(
        tmp_path / "gh.toml",
        'grpc_listen = "127.0.0.1:1001"\nhttp_listen = "127.0.0.1:2001"\n'
        'checkpoint_every = 7\nlog_format = "json"\n',
    )
    env = {"GATEHOUSE_GRPC_LISTEN": "127.0.0.1:1002", "GATEHOUSE_HTTP_LISTEN": "127.0.0.1:2002"}
    flags = {"grpc_listen": "127.0.0.1:1003"}
    settings = load(Settings, flags=flags, env=env, config_file=config)
    assert settings.grpc_listen == "127.0.0.1:1003"  # flag
    assert settings.http_listen == "127.0.0.1:2002"  # env over file
    assert settings.checkpoint_every == 7  # file over default
    assert settings.log_format == "json"
    assert settings.heartbeat_interval == 10.0  # default


def test_yaml_file_with_durations_lists_and_booleans(tmp_path: Path) -> None:
    config = write(
        tmp_path / "gh.yaml",
        "dev: true\ncheckpoint_interval: 5m\naudit_min_retention: 90d\n"
        "audit_witness: [/var/lib/w1.ndjson, 'https://w.example/cp']\n"
        "admin_groups: [ops, sre]\n",
    )
    settings = load(Settings, flags={}, env={}, config_file=config)
    assert settings.dev is True
    assert settings.checkpoint_interval == 300.0
    assert settings.min_retention == timedelta(days=90)
    assert settings.witnesses == ("/var/lib/w1.ndjson", "https://w.example/cp")
    assert settings.admin_groups == ("ops", "sre")


def test_env_names_kept_from_before() -> None:
    env = {
        "GATEHOUSE_AUDIT_WITNESS": "/a, /b",
        "GATEHOUSE_AUDIT_MIN_RETENTION": "2d",
        "GATEHOUSE_OIDC_ISSUER": "https://idp.example",
        "GATEHOUSE_OIDC_AUDIENCE": "gatehouse,cli",
        "GATEHOUSE_AUTH_FAIL_LIMIT": "5",
    }
    settings = load(Settings, flags={}, env=env)
    assert settings.witnesses == ("/a", "/b")
    assert settings.min_retention == timedelta(days=2)
    assert settings.oidc_audience == ("gatehouse", "cli")
    assert settings.auth_fail_limit == 5


def test_secret_from_a_file_at_each_layer(tmp_path: Path) -> None:
    secret = write(tmp_path / "db-url", "postgresql://gh:s3cret@db/gh\n")
    from_env = load(Settings, flags={}, env={"GATEHOUSE_DATABASE_URL_FILE": str(secret)})
    assert from_env.database_url == "postgresql://gh:s3cret@db/gh"  # trailing newline dropped
    config = write(tmp_path / "gh.toml", f'database_url_file = "{secret}"\n')
    assert load(Settings, flags={}, env={}, config_file=config).database_url == (
        "postgresql://gh:s3cret@db/gh"
    )
    # A plain value in a higher layer wins over the file variant in a lower one.
    env = {"GATEHOUSE_DATABASE_URL": "sqlite:///x.db"}
    assert load(Settings, flags={}, env=env, config_file=config).database_url == "sqlite:///x.db"
    token = write(tmp_path / "join", "ghj_abc\n")
    agent = load(AgentSettings, flags={}, env={"GATEHOUSE_AGENT_TOKEN_FILE": str(token)})
    assert agent.token == "ghj_abc"


def test_a_key_and_its_file_variant_in_one_place_are_refused(tmp_path: Path) -> None:
    secret = write(tmp_path / "db-url", "sqlite:///a.db")
    env = {"GATEHOUSE_DATABASE_URL": "sqlite:///b.db", "GATEHOUSE_DATABASE_URL_FILE": str(secret)}
    with pytest.raises(ConfigError, match=r"given twice.*GATEHOUSE_DATABASE_URL_FILE"):
        load(Settings, flags={}, env=env)


def test_unreadable_or_empty_secret_file_names_its_source(tmp_path: Path) -> None:
    env = {"GATEHOUSE_DATABASE_URL_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match=r"GATEHOUSE_DATABASE_URL_FILE: cannot read .*missing"):
        load(Settings, flags={}, env=env)
    empty = write(tmp_path / "empty", "\n")
    with pytest.raises(ConfigError, match=r"--database-url-file: .*empty"):
        load(Settings, flags={"database_url_file": str(empty)}, env={})


def test_unknown_key_names_file_line_and_a_suggestion(tmp_path: Path) -> None:
    config = write(tmp_path / "gh.toml", 'dev = true\n\ngrpc_listn = "0.0.0.0:1"\n')
    with pytest.raises(ConfigError, match=r"gh\.toml:3: unknown key 'grpc_listn'.*'grpc_listen'"):
        load(Settings, flags={}, env={}, config_file=config)
    yaml_config = write(tmp_path / "gh.yaml", "dev: true\nnope: 1\n")
    with pytest.raises(ConfigError, match=r"gh\.yaml:2: unknown key 'nope'"):
        load(Settings, flags={}, env={}, config_file=yaml_config)


def test_wrong_kind_of_value_names_key_and_source(tmp_path: Path) -> None:
    config = write(tmp_path / "gh.toml", '\ncheckpoint_every = "often"\n')
    with pytest.raises(ConfigError, match=r"checkpoint_every \(.*gh\.toml:2\): must be a whole"):
        load(Settings, flags={}, env={}, config_file=config)
    with pytest.raises(ConfigError, match=r"checkpoint_interval \(GATEHOUSE_CHECKPOINT_INTERVAL\)"):
        load(Settings, flags={}, env={"GATEHOUSE_CHECKPOINT_INTERVAL": "soon"})
    with pytest.raises(ConfigError, match=r"dev \(GATEHOUSE_DEV\): must be true or false"):
        load(Settings, flags={}, env={"GATEHOUSE_DEV": "maybe"})
    with pytest.raises(ConfigError, match=r"grpc_listen \(.*gh\.yaml:1\): must be text"):
        load(Settings, flags={}, env={}, config_file=write(tmp_path / "gh.yaml", "grpc_listen: 5"))


def test_a_key_repeated_in_yaml_is_refused_not_overwritten(tmp_path: Path) -> None:
    config = write(
        tmp_path / "gh.yaml", "grpc_listen: 127.0.0.1:1\ndev: true\ngrpc_listen: 0.0.0.0:1\n"
    )
    with pytest.raises(ConfigError, match=r"gh\.yaml:3: key 'grpc_listen' is given again .*line 1"):
        load(Settings, flags={}, env={}, config_file=config)


def test_malformed_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(Settings, flags={}, env={}, config_file=write(tmp_path / "a.toml", "dev = \n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(Settings, flags={}, env={}, config_file=write(tmp_path / "a.yaml", "- 1\n"))
    with pytest.raises(ConfigError, match=r"must end in \.toml, \.yaml or \.yml"):
        load(Settings, flags={}, env={}, config_file=write(tmp_path / "a.ini", "x=1"))
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(Settings, flags={}, env={}, config_file=tmp_path / "none.toml")


def test_empty_env_value_counts_as_unset() -> None:
    assert load(Settings, flags={}, env={"GATEHOUSE_GRPC_LISTEN": " "}).grpc_listen == (
        "127.0.0.1:8443"
    )


def test_the_command_line_layers_the_same_way(tmp_path: Path) -> None:
    """The real `gatehouse agent run`: a flag beats the environment beats the file (the
    refusal of plaintext to a remote address names the address that won)."""
    config = write(
        tmp_path / "agent.yaml",
        "name: vpc-1\ntoken: ghj_x\ninsecure: true\ncontrolplane: 10.231.9.1:1\n",
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}

    def refused_for(*flags: str, **env: str) -> str:
        result = subprocess.run(
            [*GATEHOUSE, "agent", "run", "--config", str(config), *flags],
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        match = re.search(r"--insecure is refused for (\S+):", result.stderr)
        assert match is not None, result.stderr
        return match.group(1)

    assert refused_for() == "10.231.9.1:1"
    assert refused_for(GATEHOUSE_CONTROLPLANE="10.231.9.2:1") == "10.231.9.2:1"
    flag = ("--controlplane", "10.231.9.3:1")
    assert refused_for(*flag, GATEHOUSE_CONTROLPLANE="10.231.9.2:1") == "10.231.9.3:1"


def test_a_missing_token_names_every_way_to_give_it(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    result = subprocess.run(
        [*GATEHOUSE, "agent", "run", "--name", "x"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "token is required" in result.stderr
    assert "GATEHOUSE_AGENT_TOKEN" in result.stderr

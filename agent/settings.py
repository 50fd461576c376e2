"""Everything one agent process is configured with, as one typed, frozen object.

Built once at the edge (`gatehouse agent run`: flags > GATEHOUSE_* > --config file > defaults,
see cli/config.py); the join token may come from a file (`token_file`,
GATEHOUSE_AGENT_TOKEN_FILE) so it sits in neither a unit file nor `ps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cli.config import setting

DEFAULT_CONTROLPLANE = "127.0.0.1:8443"
LOG_FORMATS = ("text", "json")


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "gatehouse"


class AgentSettingsError(ValueError):
    """A setting the agent cannot run with; the message names the key."""


@dataclass(frozen=True)
class AgentSettings:
    controlplane: str = setting(
        DEFAULT_CONTROLPLANE,
        help="host:port of the control plane's gRPC listener; several replicas (or a load "
        "balancer's name) comma-separated, tried in turn, names resolved anew at each "
        "reconnect.",
    )
    token: str = setting(
        "",
        secret=True,
        env="GATEHOUSE_AGENT_TOKEN",
        help="Join token (carries the CA pin); with --insecure also a --dev credential.",
    )
    name: str = setting(
        "", env="GATEHOUSE_AGENT_NAME", help="Agent name (as created by the admin)."
    )
    data_dir: Path = setting(default_factory=default_data_dir, help="State directory.")
    insecure: bool = setting(False, help="Plaintext gRPC; only to a loopback address.")
    ca_file: Path | None = setting(
        None,
        help="CA of the control plane's certificate; default: the CA the join token pins, "
        "else the system's CAs.",
    )
    http_listen: str = setting(
        "",
        env="GATEHOUSE_AGENT_HTTP_LISTEN",
        help="host:port for /healthz and /metrics (default: off).",
    )
    log_format: str = setting("text", help="text or json (one JSON object per line).")
    verbose: bool = setting(False, flags=("--verbose", "-v"), help="Debug logging.")

    def validate(self) -> None:
        if not self.token:
            raise AgentSettingsError(
                "token is required: --token, GATEHOUSE_AGENT_TOKEN(_FILE) or token_file"
            )
        if not self.name:
            raise AgentSettingsError("name is required: the name the agent was created with")
        for address in self.addresses or [""]:
            _host, sep, port = address.rpartition(":")
            if not sep or not _host or not port.isdigit() or not 0 < int(port) < 65536:
                raise AgentSettingsError(
                    f"controlplane {address!r} is not host:port (several: comma-separated)"
                )
        if self.log_format not in LOG_FORMATS:
            raise AgentSettingsError(f"log_format must be text or json, not {self.log_format!r}")
        if self.http_listen:
            _host, sep, port = self.http_listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise AgentSettingsError(f"http_listen {self.http_listen!r} is not host:port")

    @property
    def addresses(self) -> list[str]:
        """The control plane's addresses (`controlplane` is a comma-separated list)."""
        return [a.strip() for a in self.controlplane.split(",") if a.strip()]

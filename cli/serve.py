"""Long-running processes: `gatehouse controlplane serve` and `gatehouse agent run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.errors import USAGE, CliError
from cli.options import ControlplaneOpt, DataDirOpt, resolve_data_dir, run, setup_logging

controlplane_app = typer.Typer(help="Run the control plane.", no_args_is_help=True)
agent_app = typer.Typer(help="Run an agent next to your targets.", no_args_is_help=True)


@controlplane_app.command("serve")
def controlplane_serve(
    dev: Annotated[
        bool,
        typer.Option(
            "--dev", help="Plaintext on loopback (no TLS), for a laptop; admin token in DIR."
        ),
    ] = False,
    data_dir: DataDirOpt = None,
    grpc_listen: Annotated[
        str, typer.Option(envvar="GATEHOUSE_GRPC_LISTEN", help="host:port for gRPC.")
    ] = "127.0.0.1:8443",
    http_listen: Annotated[
        str, typer.Option(envvar="GATEHOUSE_HTTP_LISTEN", help="host:port for health and export.")
    ] = "127.0.0.1:8080",
    database_url: Annotated[
        str | None,
        typer.Option(envvar="GATEHOUSE_DATABASE_URL", help="SQLAlchemy URL of the store."),
    ] = None,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            envvar="GATEHOUSE_CHECKPOINT_EVERY", help="Sign a checkpoint every N audit events."
        ),
    ] = 1000,
    checkpoint_interval: Annotated[
        str,
        typer.Option(
            envvar="GATEHOUSE_CHECKPOINT_INTERVAL",
            help="Also sign a checkpoint this often when events came since the last (90s, 5m).",
        ),
    ] = "60s",
    audit_witness: Annotated[
        str,
        typer.Option(
            envvar="GATEHOUSE_AUDIT_WITNESS",
            help="Push each checkpoint here too, comma-separated: absolute file paths "
            "(NDJSON, fsynced) and http(s) URLs (JSON POST). Check with `audit verify --witness`.",
        ),
    ] = "",
    audit_min_retention: Annotated[
        str,
        typer.Option(
            envvar="GATEHOUSE_AUDIT_MIN_RETENTION",
            help="Prune never removes events younger than this (e.g. 30d, 90d).",
        ),
    ] = "30d",
    audit_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="GATEHOUSE_AUDIT_KEY_FILE",
            help="Ed25519 key (PEM) that signs checkpoints; shared by all replicas. "
            "Default: made in the data dir.",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="GATEHOUSE_TLS_CERT",
            help="Server certificate chain (PEM) for both listeners; re-read when it changes. "
            "Default: issued by the control plane's own CA (DIR/ca.pem).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(envvar="GATEHOUSE_TLS_KEY", help="Key (PEM) of --tls-cert."),
    ] = None,
    public_addr: Annotated[
        str,
        typer.Option(
            envvar="GATEHOUSE_PUBLIC_ADDR",
            help="Names and IPs clients dial, comma-separated: put in the self-issued "
            "certificate (with the listen addresses and localhost).",
        ),
    ] = "",
    trusted_proxies: Annotated[
        str,
        typer.Option(
            envvar="GATEHOUSE_TRUSTED_PROXIES",
            help="Read a PROXY protocol v2 header (the client's address) from these peers "
            "only, comma-separated CIDRs (your TCP load balancers).",
        ),
    ] = "",
    agent_cert_lifetime: Annotated[
        str,
        typer.Option(
            envvar="GATEHOUSE_AGENT_CERT_LIFETIME",
            help="Lifetime of agents' client certificates, renewed at 2/3 of it (30s, 8h, 1d).",
        ),
    ] = "24h",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the control plane: apply migrations, listen, relay and record.

    Production (TLS on both listeners, CA and admin token made in DIR on first start):
      gatehouse controlplane serve --data-dir /var/lib/gatehouse --grpc-listen 0.0.0.0:8443
      --http-listen 0.0.0.0:8080 --public-addr gw.example.com

    Example: gatehouse controlplane serve --dev --data-dir ./data
    """
    from controlplane.audit.settings import parse_duration, split_witnesses
    from controlplane.errors import GatehouseError
    from controlplane.server import Settings, serve

    try:
        interval = parse_duration(checkpoint_interval, "--checkpoint-interval")
        retention = parse_duration(audit_min_retention, "--audit-min-retention")
        cert_lifetime = parse_duration(agent_cert_lifetime, "--agent-cert-lifetime")
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from None
    setup_logging(verbose)
    settings = Settings(
        data_dir=resolve_data_dir(data_dir),
        grpc_listen=grpc_listen,
        http_listen=http_listen,
        database_url=database_url,
        dev=dev,
        checkpoint_every=checkpoint_every,
        checkpoint_interval=interval.total_seconds(),
        witnesses=split_witnesses(audit_witness),
        min_retention=retention,
        audit_key_file=audit_key_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        public_addr=tuple(a.strip() for a in public_addr.split(",") if a.strip()),
        trusted_proxies=trusted_proxies,
        agent_cert_lifetime=cert_lifetime,
    )
    try:
        run(serve(settings))
    except GatehouseError as exc:
        raise CliError(str(exc), USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot start the control plane: {exc}") from None


@agent_app.command("run")
def agentrun(
    controlplane: ControlplaneOpt = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="GATEHOUSE_AGENT_TOKEN",
            help="Join token (carries the CA pin); with --insecure also a --dev credential.",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Agent name (as created by the admin).")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC; only to a loopback address.")
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar="GATEHOUSE_CA_FILE",
            help="CA of the control plane's certificate; default: the CA the join token pins, "
            "else the system's CAs.",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run an agent: dial out to the control plane and open targets on its orders.

    Example: gatehouse agent run --controlplane gw.example.com:8443 --token ghj_… --name vpc-1
    """
    from agent.runner import AgentFatal, AgentSettings, run_agent
    from cli.rpc import DEFAULT_CONTROLPLANE, is_loopback

    address = controlplane or DEFAULT_CONTROLPLANE  # never a person's CLI profile
    if not token:
        raise CliError("--token (or GATEHOUSE_AGENT_TOKEN) is required", USAGE)
    if not name:
        raise CliError("--name is required: the name the agent was created with", USAGE)
    if insecure and not is_loopback(address):
        raise CliError(
            f"--insecure is refused for {address}: plaintext is allowed only to loopback", USAGE
        )
    setup_logging(verbose)
    settings = AgentSettings(address, token, name, resolve_data_dir(data_dir), insecure, ca_file)
    try:
        run(run_agent(settings))
    except AgentFatal as exc:
        raise CliError(str(exc)) from None

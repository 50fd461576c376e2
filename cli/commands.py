"""Every verb of `gatehouse`: its words, arguments, options, help and examples, as data.

cli.parser walks this table and parses with argparse; a handler (`module:function`) is
imported only when its command runs, so nothing here may import more than the standard
library and the CLI's small modules: `gatehouse exec` reads this file on every call. The
README's CLI reference is checked against this table (tests/unit/cli/test_commands.py).
"""

from __future__ import annotations

from pathlib import Path

from cli.output import Format
from cli.parser import Arg, Command, Group, Opt, choice, duration, number, whole

CONTROLPLANE = Opt(
    ("--controlplane",),
    "host:port of the control plane's gRPC listener; picks the profile that names it.",
    metavar="HOST:PORT",
    env="GATEHOUSE_CONTROLPLANE",
    shown_default="the profile's (gatehouse login --controlplane), else 127.0.0.1:8443",
)
OUTPUT = Opt(
    ("-o", "--output"),
    "table or json.",
    type=choice(Format),
    default=Format.table,
    metavar="table|json",
)
PROFILE = Opt(
    ("--profile",),
    "Which saved control plane and login (default: the last login's).",
    metavar="NAME",
    env="GATEHOUSE_PROFILE",
)
GROUPS_CLAIM = Opt(
    ("--groups-claim",),
    "Claim that lists groups.",
    default="groups",
    metavar="CLAIM",
    env="GATEHOUSE_OIDC_GROUPS_CLAIM",
)
REMOTE = (CONTROLPLANE, OUTPUT)
"""What a command that asks the control plane and prints its answer takes."""


def _id(what: str) -> Arg:
    """The id of a token, review or session, for the handler's `<what>_id`."""
    return Arg(f"{what}_id", "ID", f"The {what}'s id.")


# ---- people and AI agents -------------------------------------------------------------------

EXEC = Command(
    "cli.execute:execute",
    """Run one request through the gateway; it is recorded before it runs.

    For ssh and shell connections stdin is streamed to the command (until it ends, or the
    command does) and the command's exit status is gatehouse's.""",
    (
        "gatehouse exec pg-prod -c 'select 41+1 as answer' -o json",
        "tar c src | gatehouse exec web-1 -- tar x -C /srv/app",
        "gatehouse exec api -- POST /v1/items -H 'Content-Type: application/json' -d @item.json",
        "gatehouse exec api -- GET '/v1/items?q=1' -v -o json",
    ),
    (
        Arg("connection", "NAME", "Connection name."),
        Arg(
            "args",
            "CMD",
            "ssh and shell connections: the command and its arguments, after --; http: METHOD "
            "/path?query [-H 'K: V']... [-d TEXT|@FILE|@-] [-v] (status and headers on stderr).",
            variadic=True,
        ),
        Opt(
            ("-c", "--command"),
            "SQL to run (postgres); for ssh and shell: a command line, as a remote shell reads it.",
            metavar="TEXT",
        ),
        Opt(
            ("-n", "--no-stdin"),
            "ssh and shell: send no input; the command reads end of file at once (like ssh -n).",
            switch=True,
        ),
        Opt(
            ("--no-wait",),
            "When a review is pending, do not wait: exit 3 with the review's id on stderr "
            "(the review stays open; run again once it is approved).",
            switch=True,
        ),
        *REMOTE,
    ),
    exit_at_once=True,
)

MCP_SERVE = Command(
    "cli.mcpserve:mcp",
    """Serve Gatehouse's tools to an AI agent over MCP on stdin and stdout: list_connections,
    query, describe, run_command, http_request, request_access, review_status. Each call is recorded
    (an mcp.call event, then the session's own) with your credential: GATEHOUSE_TOKEN (a
    delegated token: the agent is the events' actor) or your login. A review never blocks a
    call: it answers pending_review with the review's id.""",
    (
        "GATEHOUSE_TOKEN=$(gatehouse tokens create --actor claude --ttl 8h) gatehouse mcp",
        "gatehouse mcp config --client claude > .mcp.json",
    ),
    (CONTROLPLANE,),
)

MCP = Group(
    MCP_SERVE.help,
    MCP_SERVE.examples,
    {
        "config": Command(
            "cli.mcpserve:mcp_config",
            """Print an MCP client's configuration for `gatehouse mcp` (JSON to merge into
            its file: Claude Code's .mcp.json, Cursor's .cursor/mcp.json, VS Code's
            .vscode/mcp.json); with --url, for the control plane's remote /mcp endpoint.""",
            (
                "gatehouse mcp config --client claude > .mcp.json",
                "gatehouse mcp config --client vscode --url https://gw.example.com:8080/mcp",
            ),
            (
                Opt(
                    ("--client",),
                    "claude, cursor or vscode.",
                    metavar="CLIENT",
                    required=True,
                ),
                Opt(
                    ("--url",),
                    "The control plane's /mcp endpoint, for a remote server instead of stdio.",
                    metavar="URL",
                ),
                CONTROLPLANE,
            ),
        ),
    },
    default=MCP_SERVE,
)

CONNECT = Command(
    "cli.listeners:connect",
    """Listen locally for native clients (psql, psycopg, asyncpg, GUIs; ssh, scp, sftp for an
    ssh connection; curl, httpx, requests, SDKs for an http one); each connection (each SSH
    channel) is one audited session.""",
    (
        "gatehouse connect pg-prod --port 5433   # then: psql -h 127.0.0.1 -p 5433",
        "gatehouse connect web-1 --port 2222     # then: ssh -p 2222 localhost",
        "gatehouse connect api --port 8081       # then: curl http://127.0.0.1:8081/v1/items",
    ),
    (
        Arg("connection", "NAME", "Connection name."),
        Opt(
            ("--port",),
            "Local port; 0 picks a free one.",
            type=whole(0, 65535),
            metavar="PORT",
            shown_default="5433; ssh: 2222; http: 8081",
        ),
        Opt(("--host",), "Local address (loopback only).", default="127.0.0.1", metavar="HOST"),
        Opt(
            ("--authorized-keys",),
            "ssh: public keys that may log in to the listener (repeatable).",
            type=Path,
            metavar="FILE",
            repeat=True,
            shown_default="~/.ssh/authorized_keys and ~/.ssh/id_*.pub",
        ),
        CONTROLPLANE,
    ),
)

SSH = Command(
    "cli.ssh:ssh",
    """Open an interactive terminal through the gateway; the session is recorded and can be
    replayed. Exits with the remote shell's (or command's) exit status.""",
    (
        "gatehouse ssh web-1",
        "gatehouse ssh web-1 -- htop   # a command with a terminal, like ssh -t",
    ),
    (
        Arg("connection", "NAME", "Connection name (type ssh or shell)."),
        Arg(
            "args",
            "CMD",
            "A command to run with a terminal instead of a login shell, after --.",
            variadic=True,
        ),
        CONTROLPLANE,
    ),
)

LOGIN = Command(
    "cli.login:login",
    """Log in with your identity provider; later commands use the login and the control
    plane.""",
    (
        "gatehouse login                # open the URL shown, on any device",
        "gatehouse login --browser      # a browser on this machine",
        "gatehouse login --controlplane gw.example.com:8443 --ca-file ca.pem --profile prod",
    ),
    (
        Opt(("--browser",), "Use a browser on this machine (PKCE).", switch=True),
        Opt(("--device",), "Confirm a code on any device (the default).", switch=True),
        Opt(
            ("--controlplane",),
            "host:port of the control plane; remembered in the profile.",
            metavar="HOST:PORT",
            env="GATEHOUSE_CONTROLPLANE",
        ),
        Opt(
            ("--ca-file",),
            "CA certificate (PEM) for the control plane; a copy is kept in the profile.",
            metavar="FILE",
            env="GATEHOUSE_CA_FILE",
        ),
        PROFILE,
        Opt(
            ("--issuer",),
            "The identity provider's issuer URL (default: the one the control plane names).",
            metavar="URL",
            env="GATEHOUSE_OIDC_ISSUER",
        ),
        Opt(
            ("--client-id",),
            "The CLI's client id at the identity provider (default: gatehouse-cli).",
            metavar="ID",
            env="GATEHOUSE_OIDC_CLIENT_ID",
        ),
        Opt(
            ("--scope",),
            "Scopes to ask for, space-separated (default: openid profile email offline_access).",
            metavar="SCOPES",
            env="GATEHOUSE_OIDC_SCOPES",
        ),
        Opt(
            ("--resource",),
            "Resource indicator (RFC 8707) for the access token, if the provider needs one.",
            metavar="URI",
            env="GATEHOUSE_OIDC_RESOURCE",
        ),
        GROUPS_CLAIM,
    ),
)

LOGOUT = Command(
    "cli.login:logout",
    """Forget a profile's login and the profile (and tell the identity provider, when it
    offers revocation).""",
    ("gatehouse logout --profile prod",),
    (PROFILE,),
)

WHOAMI = Command(
    "cli.login:whoami",
    """Show who the stored login says you are: profile, control plane, subject, e-mail, groups
    and expiry.""",
    ("gatehouse whoami -o json",),
    (OUTPUT, GROUPS_CLAIM, PROFILE),
)

CONNECTIONS = Group(
    "The connections you may use.",
    ("gatehouse connections list -o json",),
    {
        "list": Command(
            "cli.connections:connections_list",
            """List the connections you may use, the modes the access rules grant you on each,
            and which of them need a review first.""",
            ("gatehouse connections list -o json",),
            REMOTE,
        ),
    },
)

TOKENS = Group(
    "Delegated tokens: let an AI agent act as you, limited and expiring.",
    ("gatehouse tokens create --actor devin --ttl 8h --connections pg-prod",),
    {
        "create": Command(
            "cli.tokens:tokens_create",
            """Create a token that acts as you for an AI agent and print its secret once.

            Every event of a session opened with it names you as `user` and the agent as
            `actor`. It has your groups as they are at each use (never more than today's) and
            the `user` role.""",
            ("gatehouse tokens create --actor devin --ttl 8h --connections pg-prod",),
            (
                Opt(("--actor",), "Who uses the token, e.g. devin.", metavar="NAME", required=True),
                Opt(
                    ("--ttl",),
                    "Lifetime, e.g. 30m, 8h, 7d.",
                    type=duration(),
                    default=8 * 3600,
                    metavar="DURATION",
                    shown_default="8h",
                ),
                Opt(
                    ("--connections",),
                    "Comma-separated connections (globs) it is limited to; default: all you "
                    "may use.",
                    metavar="A,B",
                ),
                Opt(
                    ("--role",),
                    "user, or admin: only an admin may give it, it is recorded, and it holds "
                    "only while you are still an admin.",
                    default="user",
                    metavar="ROLE",
                ),
                *REMOTE,
            ),
        ),
        "list": Command(
            "cli.tokens:tokens_list",
            "List the delegated tokens you created (never their secrets).",
            ("gatehouse tokens list -o json",),
            REMOTE,
        ),
        "revoke": Command(
            "cli.tokens:tokens_revoke",
            """Revoke a delegated token: new sessions are refused at once, live ones end within
            seconds.""",
            ("gatehouse tokens revoke 6f1c…",),
            (_id("token"), CONTROLPLANE),
        ),
    },
)

REVIEWS = Group(
    "Access reviews: approve or deny sessions that an access rule lets open only after a review.",
    ("gatehouse reviews list",),
    {
        "list": Command(
            "cli.reviews:reviews_list",
            "List the pending reviews you may decide, and your own requests.",
            ("gatehouse reviews list -o json",),
            REMOTE,
        ),
        "approve": Command(
            "cli.reviews:reviews_approve",
            "Approve a review: the requester may use that connection and mode for the rule's TTL.",
            ("gatehouse reviews approve 6f1c…",),
            (_id("review"), *REMOTE),
        ),
        "deny": Command(
            "cli.reviews:reviews_deny",
            "Deny a review: the waiting session ends with your reason.",
            ("gatehouse reviews deny 6f1c… --reason 'not during the freeze'",),
            (
                _id("review"),
                Opt(("--reason",), "Why; shown to the requester.", metavar="TEXT", required=True),
                *REMOTE,
            ),
        ),
    },
)

SESSIONS = Group(
    "Recorded sessions.",
    ("gatehouse sessions list --connection pg-prod --since 2026-11-01",),
    {
        "list": Command(
            "cli.sessions:sessions_list",
            "List recorded sessions, newest first.",
            ("gatehouse sessions list --connection pg-prod --since 2026-11-01",),
            (
                Opt(("--user",), "Only this user (subject).", metavar="SUBJECT"),
                Opt(("--connection",), "Only this connection.", metavar="NAME"),
                Opt(("--since",), "Started at or after, e.g. 2026-11-01.", metavar="DATE"),
                Opt(
                    ("--type",),
                    "Connection type, e.g. postgres.",
                    dest="type_",
                    metavar="TYPE",
                ),
                Opt(
                    ("--limit",),
                    "At most this many, newest first.",
                    type=whole(1, 2**32 - 1),
                    default=100,
                    metavar="N",
                ),
                *REMOTE,
            ),
        ),
        "show": Command(
            "cli.sessions:sessions_show",
            "Show one session and its events (statements and results) in order.",
            ("gatehouse sessions show 5c87a46a-a936-476c-83f1-2fccbd206f28",),
            (_id("session"), *REMOTE),
        ),
        "replay": Command(
            "cli.replay:sessions_replay",
            """Replay a session: a terminal session's recording plays with its timing (checked
            against the audit trail first); a database session's statements and results print
            in order.""",
            ("gatehouse sessions replay 5c87a46a-a936-476c-83f1-2fccbd206f28 --speed 2",),
            (
                _id("session"),
                Opt(
                    ("--speed",),
                    "Play this many times faster (0.5: slower).",
                    type=number(0.01),
                    default=1.0,
                    metavar="N",
                ),
                Opt(("--instant",), "Print all output at once, no waiting.", switch=True),
                Opt(
                    ("--idle-limit",),
                    "Cut longer pauses to this many recorded seconds; 0 keeps them.",
                    type=number(0),
                    metavar="SECONDS",
                    shown_default="2, or the recording's own",
                ),
                Opt(
                    ("--output",),
                    "Write the checked recording there; - : stdout.",
                    metavar="FILE.cast",
                ),
                CONTROLPLANE,
            ),
        ),
    },
)

# ---- the audit trail ------------------------------------------------------------------------

PRUNE = Command(
    "cli.audit:audit_prune",
    """Ask to remove an old range of the trail (admin): records an audit.prune_request and
    prints its id; nothing is removed until another admin runs `audit prune approve ID`.""",
    ("gatehouse audit prune --before 2026-01-01 --dry-run",),
    (
        Opt(
            ("--before",),
            "Remove every event up to the last one older than this date (YYYY-MM-DD, UTC) or "
            "RFC 3339 time; at least the minimum retention (default 30 days) ago.",
            metavar="DATE",
        ),
        Opt(("--dry-run",), "Say what would be removed; remove nothing.", switch=True),
        *REMOTE,
    ),
)

AUDIT = Group(
    "Export, follow, verify, sign and prune the audit trail.",
    ("gatehouse audit export --after 1042 --follow >> trail.ndjson",),
    {
        "export": Command(
            "cli.audit:audit_export",
            "Print audit events as NDJSON, in seq order.",
            ("gatehouse audit export --after 1042 --follow >> trail.ndjson",),
            (
                Opt(
                    ("--after",),
                    "Start after this seq (the cursor).",
                    type=whole(0),
                    default=0,
                    metavar="SEQ",
                ),
                Opt(("--limit",), "At most this many events.", type=whole(1), metavar="N"),
                Opt(
                    ("--types",),
                    "Comma-separated event types, e.g. db.query,db.result.",
                    metavar="A,B",
                ),
                Opt(
                    ("--format",),
                    "json (stored events) or ocsf.",
                    dest="fmt",
                    type=choice(("json", "ocsf")),
                    default="json",
                    metavar="json|ocsf",
                ),
                Opt(
                    ("--follow", "-f"),
                    "Keep printing new events; reconnect and resume on breaks.",
                    switch=True,
                ),
                CONTROLPLANE,
            ),
        ),
        "verify": Command(
            "cli.audit:audit_verify",
            """Walk the hash chain and check every signed checkpoint; say how far the
            signatures reach; exit 1 naming the first broken link, bad signature, unsigned
            tail or rewound head.""",
            ("gatehouse audit verify --file trail.ndjson --key pub.pem",),
            (
                Opt(
                    ("--file",),
                    "Verify this export (NDJSON, `-` for stdin) offline, not the store.",
                    type=Path,
                    metavar="FILE",
                ),
                Opt(
                    ("--key",),
                    "Public key(s) checkpoints must verify with (PEM, from `audit "
                    "public-key`); with the store, default: the key the server reports. With "
                    "--key, every event must be vouched for by a checkpoint signed by one of "
                    "them.",
                    type=Path,
                    metavar="PEM",
                    repeat=True,
                ),
                Opt(
                    ("--allow-unsigned-tail",),
                    "With --key: accept events after the last signed checkpoint if there are at "
                    "most N of them, or the oldest is younger than DURATION (e.g. 2m).",
                    metavar="N|DURATION",
                ),
                Opt(
                    ("--witness",),
                    "A witness file (GATEHOUSE_AUDIT_WITNESS): every checkpoint in it must be "
                    "in the store, identical, and the store must not end before the newest one.",
                    type=Path,
                    metavar="FILE",
                ),
                *REMOTE,
            ),
        ),
        "checkpoint": Command(
            "cli.audit:audit_checkpoint",
            """Append a signed checkpoint of the trail now (admin). Keep its output: it vouches
            for everything up to it.""",
            ("gatehouse audit checkpoint -o json >> checkpoints.ndjson",),
            REMOTE,
        ),
        "public-key": Command(
            "cli.audit:audit_public_key",
            "Print the Ed25519 public key that signs checkpoints and prune anchors (PEM).",
            ("gatehouse audit public-key > pub.pem",),
            REMOTE,
        ),
        "prune": Group(
            PRUNE.help,
            PRUNE.examples,
            {
                "approve": Command(
                    "cli.audit:audit_prune_approve",
                    """Approve and perform another admin's prune request (admin; not your own),
                    leaving a signed anchor so that what remains still verifies, and an
                    audit.prune event naming both.""",
                    ("gatehouse audit prune approve 0193c1d2-...",),
                    (Arg("request_id", "ID", "The id `audit prune --before` printed."), *REMOTE),
                ),
            },
            default=PRUNE,
        ),
    },
)

# ---- administrators -------------------------------------------------------------------------

ADMIN = Group(
    "Administer agents, connections and policy.",
    ("gatehouse admin apply -f gatehouse.yaml",),
    {
        "agents": Group(
            "Enroll, list and revoke agents.",
            ("gatehouse admin agents create vpc-eu-1 --uses 10 --ttl 24h",),
            {
                "create": Command(
                    "cli.admin:agents_create",
                    """Create an agent and print its join token, which carries the pin of the
                    control plane's CA: the agent needs no CA file.""",
                    ("gatehouse admin agents create vpc-eu-1 --uses 10 --ttl 24h",),
                    (
                        Arg("name", "NAME", "Agent name, e.g. vpc-eu-1."),
                        Opt(
                            ("--uses",),
                            "How many enrollments the join token allows (re-joins).",
                            type=whole(1, 2**32 - 1),
                            default=1,
                            metavar="N",
                        ),
                        Opt(
                            ("--ttl",),
                            "How long the join token works (30m, 24h, 7d).",
                            type=duration(
                                maximum=2**32 - 1
                            ),  # uint32 on the wire; the control plane says its limit
                            default=3600,
                            metavar="DURATION",
                            shown_default="1h",
                        ),
                        *REMOTE,
                    ),
                ),
                "list": Command(
                    "cli.admin:agents_list",
                    "Show every agent instance: online/offline, version, host, replica, last seen.",
                    ("gatehouse admin agents list -o json",),
                    REMOTE,
                ),
                "revoke": Command(
                    "cli.admin:agents_revoke",
                    """Revoke an agent (every instance and its join token), or one instance of
                    it: their credentials stop working and their streams are closed on every
                    replica.""",
                    (
                        "gatehouse admin agents revoke vpc-eu-1",
                        "gatehouse admin agents revoke vpc-eu-1 --instance 3f2a9c01b7de",
                    ),
                    (
                        Arg("name", "NAME", "The agent to revoke."),
                        Opt(
                            ("--instance",),
                            "Revoke only this instance (see `agents list`), not the agent.",
                            default="",
                            metavar="ID",
                        ),
                        CONTROLPLANE,
                    ),
                ),
            },
        ),
        "apply": Command(
            "cli.admin:admin_apply",
            "Apply a policy file: connections, guardrails, masking, access.",
            ("gatehouse admin apply -f gatehouse.yaml",),
            (
                Opt(
                    ("-f", "--file"),
                    "The policy file (YAML).",
                    type=Path,
                    metavar="FILE",
                    required=True,
                ),
                *REMOTE,
            ),
        ),
        "connections": Group(
            "Connections as applied.",
            ("gatehouse admin connections list",),
            {
                "list": Command(
                    "cli.admin:admin_connections_list",
                    "List every connection of the applied policy and its agent's status.",
                    ("gatehouse admin connections list",),
                    REMOTE,
                ),
            },
        ),
        "tokens": Group(
            "Tokens for machines, e.g. a SIEM's audit-reader.",
            ("gatehouse admin tokens create splunk --role audit-reader --ttl 90d",),
            {
                "create": Command(
                    "cli.admin:tokens_create",
                    "Create a token and print its secret once (only its hash is stored).",
                    ("gatehouse admin tokens create splunk --role audit-reader --ttl 90d",),
                    (
                        Arg("name", "NAME", "Who holds it, e.g. splunk."),
                        Opt(
                            ("--role",),
                            "audit-reader (read the trail only) or admin.",
                            default="audit-reader",
                            metavar="ROLE",
                        ),
                        Opt(
                            ("--ttl",),
                            "Lifetime, e.g. 90d.",
                            type=duration(),
                            metavar="DURATION",
                            shown_default="none: no expiry",
                        ),
                        *REMOTE,
                    ),
                ),
                "list": Command(
                    "cli.admin:tokens_list",
                    "List machine tokens (never their secrets).",
                    ("gatehouse admin tokens list -o json",),
                    REMOTE,
                ),
                "revoke": Command(
                    "cli.admin:tokens_revoke",
                    "Revoke a token: it stops working at once.",
                    ("gatehouse admin tokens revoke 6f1c…",),
                    (_id("token"), CONTROLPLANE),
                ),
            },
        ),
    },
)

# ---- the long-running processes -------------------------------------------------------------

SETTINGS_HELP = """

Every option is also a GATEHOUSE_* variable and a key of the --config file. Flags win over
variables, variables over the file."""

CONTROLPLANE_GROUP = Group(
    "Run the control plane.",
    ("gatehouse controlplane serve --dev --data-dir ./data",),
    {
        "serve": Command(
            "cli.serve:serve",
            """Run the control plane: apply migrations, listen, relay and record."""
            + SETTINGS_HELP
            + """

Production (TLS on both listeners, CA and admin token made in DIR on first start):
  gatehouse controlplane serve --data-dir /var/lib/gatehouse --grpc-listen 0.0.0.0:8443
    --http-listen 0.0.0.0:8080 --public-addr gw.example.com""",
            ("gatehouse controlplane serve --dev --data-dir ./data",),
            "cli.serve:options",
        ),
    },
)

AGENT = Group(
    "Run an agent next to your targets.",
    ("gatehouse agent run --controlplane gw.example.com:8443 --token ghj_… --name vpc-1",),
    {
        "run": Command(
            "cli.agentrun:agent_run",
            "Run an agent: dial out to the control plane and open targets on its orders."
            + SETTINGS_HELP,
            ("gatehouse agent run --controlplane gw.example.com:8443 --token ghj_… --name vpc-1",),
            "cli.agentrun:options",
        ),
    },
)

ROOT = Group(
    "Gatehouse: an access gateway that records every request before it reaches the target.",
    (
        "gatehouse exec pg-prod -c 'select 1'",
        "gatehouse sessions list --connection pg-prod",
    ),
    {
        # Commands first, then groups: the order `gatehouse --help` lists them in.
        "exec": EXEC,
        "connect": CONNECT,
        "ssh": SSH,
        "mcp": MCP,
        "login": LOGIN,
        "logout": LOGOUT,
        "whoami": WHOAMI,
        "controlplane": CONTROLPLANE_GROUP,
        "agent": AGENT,
        "admin": ADMIN,
        "sessions": SESSIONS,
        "connections": CONNECTIONS,
        "tokens": TOKENS,
        "reviews": REVIEWS,
        "audit": AUDIT,
    },
)


def walk(group: Group = ROOT, words: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Command]]:
    """Every command with its words, depth first (a group's default command first)."""
    found: list[tuple[tuple[str, ...], Command]] = []
    if group.default is not None:
        found.append((words, group.default))
    for word, node in group.commands.items():
        if isinstance(node, Group):
            found += walk(node, (*words, word))
        else:
            found.append(((*words, word), node))
    return found

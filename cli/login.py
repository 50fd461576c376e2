"""`gatehouse login | logout | whoami`: a person's OIDC login, kept per profile for the
commands after it.

The OAuth flows are in cli.oidcflow (on Authlib's client), the token file in cli.tokenstore, the
profiles (which control plane, which CA) in cli.profiles; this module is the commands. The names
of those modules are re-exported here, where the rest of the code and the tests look for them.
The commands' options and help are declared in cli.commands.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cli import profiles
from cli.errors import REFUSED, USAGE, CliError
from cli.oidcflow import DevicePrompt, browser_login, device_login, discover, refresh, revoke
from cli.output import Format, echo, emit
from cli.tokenstore import (
    DEFAULT_CLIENT_ID,
    DEFAULT_SCOPE,
    DEFAULT_SCOPES,
    LoginSettings,
    TokenSet,
    TokenStore,
    default_token_path,
    when,
)

__all__ = [
    "DevicePrompt",
    "LoginSettings",
    "TokenSet",
    "TokenStore",
    "browser_login",
    "default_token_path",
    "device_login",
    "discover",
    "discover_login",
    "login",
    "login_settings",
    "logout",
    "refresh",
    "whoami",
]


def discover_login(address: str | None = None) -> LoginSettings | None:
    """Ask the control plane how to log in, so that its address is all a person needs."""
    import grpc

    from cli import rpc
    from cli.rpc import run
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    if address is None or profiles.selected().address != address:
        address = rpc.controlplane_address(address)
    target = address  # `login` chose it (and its CA) already: keep that choice

    async def ask() -> client_pb2.LoginConfig | None:
        async with rpc.channel(target) as channel:
            stub = client_pb2_grpc.ClientServiceStub(channel)
            try:
                return await stub.GetLoginConfig(client_pb2.GetLoginConfigRequest(), timeout=10)
            except grpc.aio.AioRpcError:
                return None

    config = run(ask())
    if config is None or not config.issuer:
        return None
    return LoginSettings(
        issuer=config.issuer,
        client_id=config.client_id or DEFAULT_CLIENT_ID,
        scopes=tuple(config.scopes) or DEFAULT_SCOPES,
        resource=config.resource or None,
        groups_claim=config.groups_claim or "groups",
    )


def login_settings(
    issuer: str | None,
    client_id: str = DEFAULT_CLIENT_ID,
    scope: str = DEFAULT_SCOPE,
    resource: str | None = None,
    groups_claim: str = "groups",
    address: str | None = None,
) -> LoginSettings:
    """Settings from flags and environment, else from the control plane, or a usage error
    that says what is missing."""
    if not issuer:
        discovered = discover_login(address)
        if discovered is not None:
            return discovered
        raise CliError(
            "no identity provider configured: set GATEHOUSE_OIDC_ISSUER or pass --issuer, or "
            "point --controlplane (GATEHOUSE_CONTROLPLANE) at a control plane that has one",
            USAGE,
        )
    return LoginSettings(
        issuer=issuer,
        client_id=client_id,
        scopes=tuple(scope.split()),
        resource=resource or None,
        groups_claim=groups_claim,
    )


def _who(tokens: TokenSet, groups_claim: str, target: profiles.Target) -> dict[str, Any]:
    claims = tokens.claims()
    groups = claims.get(groups_claim)
    if isinstance(groups, str):
        groups = [groups]
    return {
        "profile": target.profile,
        "controlplane": target.address,
        "subject": claims.get("sub"),
        "email": claims.get("email"),
        "groups": groups if isinstance(groups, list) else [],
        "issuer": tokens.issuer,
        "client_id": tokens.client_id,
        "expires_at": datetime.fromtimestamp(tokens.expires_at, UTC).isoformat(),
        "expired": tokens.remaining() <= 0,
        "refreshable": tokens.refresh_token is not None,
    }


def _profile_for_login(address: str | None, profile: str | None) -> str:
    """The profile a login writes: the named one; else the one that already has this
    address, else one named after it; else the current one, else ``default``."""
    if profile:
        return profiles.check_name(profile)
    saved = profiles.Profiles.load()
    if address:
        match = saved.matching(address)
        return match.name if match else profiles.name_for(address)
    return saved.current or profiles.DEFAULT_PROFILE


def login(
    browser: bool,
    device: bool,
    controlplane: str | None,
    ca_file: str | None,
    profile: str | None,
    issuer: str | None,
    client_id: str | None,
    scope: str | None,
    resource: str | None,
    groups_claim: str,
) -> None:
    """The device grant unless `browser`; the login and the control plane's address (and CA)
    are kept in a profile for the commands after it."""
    from rich.console import Console

    if browser and device:
        raise CliError("choose --browser or --device, not both", USAGE)
    name = _profile_for_login(controlplane, profile)
    existing = profiles.Profiles.load().entries.get(name)
    address = controlplane or (existing.controlplane if existing else None)
    address = address or profiles.DEFAULT_CONTROLPLANE
    if ca_file is None and existing is not None and existing.controlplane == address:
        ca_file = existing.ca_file
    if ca_file is not None:
        profiles.read_ca(ca_file)  # a bad CA file is a usage error before anything is asked
    # Discovery below asks this control plane, through this CA, how to log in.
    target = profiles.select(profiles.Target(address, ca_file, name, "flag"))
    settings = login_settings(
        issuer,
        client_id or DEFAULT_CLIENT_ID,
        scope or DEFAULT_SCOPE,
        resource,
        groups_claim,
        target.address,
    )
    console = Console(stderr=True, highlight=False)
    if browser:
        tokens = browser_login(
            settings,
            on_url=lambda url: console.print(
                f"Opening your browser. If it does not open, visit:\n\n  {url}\n"
            ),
        )
    else:
        status = console.status("Waiting for you to confirm the code…")

        def prompt(p: DevicePrompt) -> None:
            console.print(
                "To log in, open this page and confirm the code:\n\n"
                f"  {p.verification_uri_complete or p.verification_uri}\n\n"
                f"  code: [bold]{p.user_code}[/bold]\n"
            )
            status.start()

        def waiting(left: float) -> None:
            minutes, seconds = divmod(int(left), 60)
            status.update(
                f"Waiting for you to confirm the code… (it expires in {minutes}:{seconds:02d})"
            )

        try:
            tokens = device_login(settings, on_prompt=prompt, on_wait=waiting)
        finally:
            status.stop()
    TokenStore(profiles.token_path(name)).save(tokens)  # first: a profile never lacks its login
    saved = profiles.remember(
        name,
        target.address,
        ca_file=target.ca_file,
        issuer=settings.issuer,
        client_id=settings.client_id,
    )
    who = _who(tokens, settings.groups_claim, profiles.selected())
    groups = ", ".join(who["groups"]) or "none"
    echo(f"Logged in as {who['subject']} ({who['email'] or 'no e-mail'}); groups: {groups}")
    echo(f"Profile {saved.name}: control plane {saved.controlplane}")


def _target_of(profile: str | None) -> profiles.Target:
    """The named profile as it is saved (whatever address the environment names), else the
    profile this command would use."""
    if not profile:
        return profiles.resolve()
    entry = profiles.Profiles.load().entries.get(profiles.check_name(profile))
    if entry is None:
        return profiles.Target(profiles.DEFAULT_CONTROLPLANE, None, profile, "default")
    return profiles.Target(entry.controlplane, entry.ca_file, profile, "profile")


def logout(profile: str | None) -> None:
    """Revokes the refresh token where the identity provider offers revocation."""
    target = _target_of(profile)
    store = TokenStore(profiles.token_path(target.profile))
    tokens = store.load()
    removed = profiles.forget(target.profile)
    if tokens is None:
        echo(
            f"Not logged in (profile {target.profile})."
            + (" Removed the profile." if removed else "")
        )
        return
    why = revoke(tokens)
    store.forget()
    note = f" ({why})" if why else ""
    echo(f"Logged out of profile {target.profile}: removed {store.path}{note}")


def whoami(output: Format, groups_claim: str, profile: str | None) -> None:
    """What the stored login says, read locally: no call to the control plane."""
    target = _target_of(profile)
    tokens = TokenStore(profiles.token_path(target.profile)).load()
    if tokens is None:
        raise CliError(f"not logged in (profile {target.profile}): run `gatehouse login`", REFUSED)
    who = _who(tokens, groups_claim, target)
    expiry = when(tokens.expires_at)
    if who["expired"]:
        expiry += " (expired; refreshed on next use)" if who["refreshable"] else " (expired)"
    emit(
        output,
        who,
        ["PROFILE", "CONTROLPLANE", "SUBJECT", "EMAIL", "GROUPS", "EXPIRES", "ISSUER"],
        [
            [
                who["profile"],
                who["controlplane"],
                who["subject"],
                who["email"],
                ", ".join(who["groups"]),
                expiry,
                who["issuer"],
            ]
        ],
    )

"""`gatehouse login | logout | whoami`: a person's OIDC login, kept for the commands after it.

Two ways in, both for a public client (no secret can hide in a CLI):

* the device authorization grant (RFC 8628, the default): the CLI shows a URL and a code, the
  person confirms on any device with a browser, the CLI polls the token endpoint;
* authorization code + PKCE (RFC 7636) on a loopback redirect (RFC 8252, ``--browser``): the
  CLI listens on 127.0.0.1 on a random port and opens the browser there.

Tokens live in ``$XDG_CONFIG_HOME/gatehouse/tokens.json`` (``~/.config/...``), written
atomically with mode 0600, and are refreshed when less than a minute remains. Refreshing holds
a file lock: identity providers rotate refresh tokens and treat a reused one as theft, so two
commands refreshing at once would otherwise revoke the login.

The HTTP client is the standard library's on purpose: it is synchronous, so ``cli.rpc`` can ask
``TokenStore().current()`` for a token before a command starts its one event loop, and it adds
no import time to ``gatehouse exec``, which AI agents run again and again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.errors import REFUSED, USAGE, CliError
from cli.options import OutputOpt
from cli.output import Format, emit
from cli.rpc import is_loopback_host

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

__all__ = [
    "DevicePrompt",
    "LoginSettings",
    "TokenSet",
    "TokenStore",
    "browser_login",
    "device_login",
    "discover",
    "login",
    "login_settings",
    "logout",
    "refresh",
    "whoami",
]

DEFAULT_CLIENT_ID = "gatehouse-cli"
DEFAULT_SCOPES = ("openid", "profile", "email", "offline_access")
#: Refresh when less than this many seconds of the access token remain.
REFRESH_MARGIN = 60.0
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_SCOPE = " ".join(DEFAULT_SCOPES)
_MAX_RESPONSE = 1024 * 1024


@dataclass(frozen=True)
class LoginSettings:
    """The identity provider and how the CLI is registered there."""

    issuer: str
    client_id: str = DEFAULT_CLIENT_ID
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    #: RFC 8707 resource indicator to ask tokens for (some providers need it for the audience).
    resource: str | None = None
    groups_claim: str = "groups"
    timeout: float = 10.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.issuer)
        secure = parts.scheme == "https"
        if not (secure or (parts.scheme == "http" and is_loopback_host(parts.hostname or ""))):
            raise CliError(
                f"the OIDC issuer {self.issuer!r} must be an https:// URL (http only on loopback)",
                USAGE,
            )


@dataclass(frozen=True)
class Endpoints:
    """What discovery says about where to send the person and the CLI."""

    token: str
    authorization: str | None = None
    device_authorization: str | None = None
    revocation: str | None = None


@dataclass(frozen=True)
class TokenSet:
    """The tokens of one login, and where to refresh and revoke them."""

    access_token: str
    expires_at: float  # epoch seconds
    issuer: str
    client_id: str
    token_endpoint: str
    refresh_token: str | None = None
    id_token: str | None = None
    scope: str = ""
    revocation_endpoint: str | None = None

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def claims(self) -> dict[str, Any]:
        """Who the tokens say the person is: the JWT access token, else the ID token.

        Not verified here (the control plane verifies every token it is shown); for display.
        """
        for token in (self.access_token, self.id_token):
            claims = _unverified_claims(token) if token else None
            if claims is not None:
                return claims
        return {}

    @classmethod
    def from_response(
        cls,
        response: Mapping[str, Any],
        *,
        issuer: str,
        client_id: str,
        endpoints: Endpoints,
        previous: TokenSet | None = None,
    ) -> TokenSet:
        access = response.get("access_token")
        if not isinstance(access, str) or not access:
            raise CliError("the identity provider answered without an access token")
        expires_in = response.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 300.0
        refresh = response.get("refresh_token")
        id_token = response.get("id_token")
        return cls(
            access_token=access,
            expires_at=time.time() + lifetime,
            issuer=issuer,
            client_id=client_id,
            token_endpoint=endpoints.token,
            # Providers may keep the refresh token (no rotation) and skip a new ID token.
            refresh_token=refresh if isinstance(refresh, str) else _kept(previous, "refresh"),
            id_token=id_token if isinstance(id_token, str) else _kept(previous, "id"),
            scope=str(response.get("scope") or (previous.scope if previous else "")),
            revocation_endpoint=endpoints.revocation,
        )


def _kept(previous: TokenSet | None, which: str) -> str | None:
    if previous is None:
        return None
    return previous.refresh_token if which == "refresh" else previous.id_token


@dataclass(frozen=True)
class DevicePrompt:
    """What to tell the person: where to go and which code to expect there."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


def _unverified_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


# --- HTTP ------------------------------------------------------------------------------------


def _request(
    url: str, *, fields: Mapping[str, str] | None = None, timeout: float
) -> tuple[int, dict[str, Any]]:
    """GET (or POST ``fields`` as a form) and parse the JSON answer, errors included."""
    data = urllib.parse.urlencode(fields).encode() if fields is not None else None
    request = urllib.request.Request(url, data=data, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read(_MAX_RESPONSE)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(_MAX_RESPONSE)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the identity provider at {url}: {reason}") from None
    try:
        document = json.loads(body) if body else {}
    except ValueError:
        raise CliError(f"{url} answered HTTP {status} without JSON") from None
    if not isinstance(document, dict):
        raise CliError(f"{url} answered HTTP {status} with JSON that is not an object")
    return status, document


def _oauth_error(document: Mapping[str, Any]) -> str:
    error = str(document.get("error") or "error")
    description = document.get("error_description")
    return f"{error}: {description}" if description else error


def discover(settings: LoginSettings) -> Endpoints:
    """The provider's endpoints from its discovery document (which must name it exactly)."""
    url = settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
    status, document = _request(url, timeout=settings.timeout)
    if status != 200:
        raise CliError(f"{url} answered HTTP {status}: is {settings.issuer} an OIDC issuer?")
    if document.get("issuer") != settings.issuer:
        raise CliError(
            f"{url} names issuer {document.get('issuer')!r}, not {settings.issuer!r}: "
            "set GATEHOUSE_OIDC_ISSUER to exactly the issuer's value"
        )
    token = document.get("token_endpoint")
    if not isinstance(token, str):
        raise CliError(f"{url} names no token endpoint")

    def optional(name: str) -> str | None:
        value = document.get(name)
        return value if isinstance(value, str) else None

    return Endpoints(
        token=token,
        authorization=optional("authorization_endpoint"),
        device_authorization=optional("device_authorization_endpoint"),
        revocation=optional("revocation_endpoint"),
    )


def _scope_fields(settings: LoginSettings) -> dict[str, str]:
    fields = {"client_id": settings.client_id, "scope": " ".join(settings.scopes)}
    if settings.resource:
        fields["resource"] = settings.resource
    return fields


# --- the device authorization grant (RFC 8628) --------------------------------------------


def device_login(
    settings: LoginSettings,
    *,
    on_prompt: Callable[[DevicePrompt], object],
    on_wait: Callable[[float], object] | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> TokenSet:
    """Log in on another device: show the code, poll until the person confirms it.

    ``on_wait`` hears the seconds left before the code expires, before each pause. Polls
    respect the provider's ``interval`` and add 5 s on each ``slow_down``.
    """
    endpoints = discover(settings)
    if endpoints.device_authorization is None:
        raise CliError(
            f"{settings.issuer} does not offer the device grant: use `gatehouse login --browser`"
        )
    status, started = _request(
        endpoints.device_authorization, fields=_scope_fields(settings), timeout=settings.timeout
    )
    if status != 200 or not isinstance(started.get("device_code"), str):
        raise CliError(f"the identity provider refused to start a login: {_oauth_error(started)}")
    expires_in = float(started.get("expires_in") or 600)
    prompt = DevicePrompt(
        user_code=str(started.get("user_code", "")),
        verification_uri=str(started.get("verification_uri", "")),
        verification_uri_complete=started.get("verification_uri_complete"),
        expires_in=expires_in,
        interval=float(started.get("interval") or 5),
    )
    on_prompt(prompt)
    interval = prompt.interval
    deadline = time.monotonic() + expires_in
    fields = {
        "grant_type": DEVICE_GRANT,
        "device_code": started["device_code"],
        "client_id": settings.client_id,
    }
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CliError("the code expired before it was confirmed: run `gatehouse login` again")
        if on_wait is not None:
            on_wait(left)
        sleep(interval)
        status, answer = _request(endpoints.token, fields=fields, timeout=settings.timeout)
        if status == 200:
            return TokenSet.from_response(
                answer, issuer=settings.issuer, client_id=settings.client_id, endpoints=endpoints
            )
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            raise CliError("the login was denied at the identity provider")
        if error == "expired_token":
            raise CliError("the code expired before it was confirmed: run `gatehouse login` again")
        raise CliError(f"the identity provider refused the login: {_oauth_error(answer)}")


# --- authorization code + PKCE on a loopback redirect (RFC 7636, RFC 8252) --------------


@dataclass
class _Callback:
    """What the browser brought back to the loopback listener."""

    state: str
    params: dict[str, str] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


_DONE_PAGE = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Gatehouse</title></head><body>"
    "<h1>{title}</h1><p>{text}</p></body></html>"
)


def _callback_handler(callback: _Callback) -> type[BaseHTTPRequestHandler]:
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(url.query))
            if url.path != "/callback" or not secrets.compare_digest(
                params.get("state", ""), callback.state
            ):
                # Not the answer to this login (a stray tab, or someone else's request): ignore.
                self._page(400, "Not this login", "This answer is not for the login in progress.")
                return
            if "error" in params:
                self._page(200, "Login failed", "Return to the terminal to see why.")
            else:
                self._page(
                    200, "Logged in", "You can close this window and return to the terminal."
                )
            callback.params = params
            callback.done.set()

        def _page(self, status: int, title: str, text: str) -> None:
            body = _DONE_PAGE.format(title=title, text=text).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the query string carries the authorization code."""

    return Handler


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def browser_login(
    settings: LoginSettings,
    *,
    open_browser: Callable[[str], object] | None = None,
    on_url: Callable[[str], object] | None = None,
    timeout: float = 300.0,
) -> TokenSet:
    """Log in with a browser on this machine: PKCE (S256), state and nonce, loopback redirect.

    ``open_browser`` defaults to ``webbrowser.open``; ``on_url`` hears the authorization URL
    first, so the person can open it by hand when no browser starts (over SSH, say).
    """
    import webbrowser
    from http.server import HTTPServer

    endpoints = discover(settings)
    if endpoints.authorization is None:
        raise CliError(f"{settings.issuer} names no authorization endpoint: use the device login")
    verifier = secrets.token_urlsafe(64)
    nonce = secrets.token_urlsafe(24)
    callback = _Callback(state=secrets.token_urlsafe(24))
    server = HTTPServer(("127.0.0.1", 0), _callback_handler(callback))
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
    query = {
        **_scope_fields(settings),
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "state": callback.state,
        "nonce": nonce,
        "code_challenge": _s256(verifier),
        "code_challenge_method": "S256",
    }
    separator = "&" if urllib.parse.urlsplit(endpoints.authorization).query else "?"
    url = endpoints.authorization + separator + urllib.parse.urlencode(query)
    thread = threading.Thread(target=server.serve_forever, name="login-callback", daemon=True)
    thread.start()
    try:
        if on_url is not None:
            on_url(url)
        (open_browser or webbrowser.open)(url)
        if not callback.done.wait(timeout):
            raise CliError(f"the browser did not come back within {timeout:g} s; try again")
    finally:
        server.shutdown()
        server.server_close()
    params = callback.params
    if "error" in params:
        raise CliError(f"the identity provider refused the login: {_oauth_error(params)}")
    if "iss" in params and params["iss"] != settings.issuer:  # RFC 9207: mix-up defence
        raise CliError(f"the answer came from issuer {params['iss']!r}, not {settings.issuer!r}")
    if not params.get("code"):
        raise CliError("the browser came back without an authorization code")
    status, answer = _request(
        endpoints.token,
        fields={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": redirect_uri,
            "client_id": settings.client_id,
            "code_verifier": verifier,
        },
        timeout=settings.timeout,
    )
    if status != 200:
        raise CliError(f"the identity provider refused the code: {_oauth_error(answer)}")
    tokens = TokenSet.from_response(
        answer, issuer=settings.issuer, client_id=settings.client_id, endpoints=endpoints
    )
    id_claims = _unverified_claims(tokens.id_token) if tokens.id_token else None
    if id_claims is not None and id_claims.get("nonce") != nonce:
        raise CliError("the ID token does not carry this login's nonce: refusing it")
    return tokens


# --- refresh and storage ---------------------------------------------------------------------


def refresh(settings: LoginSettings | None, token_set: TokenSet) -> TokenSet:
    """New tokens from the refresh token, at the endpoint the login used."""
    if token_set.refresh_token is None:
        raise CliError("the login cannot be refreshed (no refresh token): run `gatehouse login`")
    fields = {
        "grant_type": "refresh_token",
        "refresh_token": token_set.refresh_token,
        "client_id": token_set.client_id,
    }
    if settings is not None and settings.resource:
        fields["resource"] = settings.resource
    timeout = settings.timeout if settings is not None else 10.0
    status, answer = _request(token_set.token_endpoint, fields=fields, timeout=timeout)
    if status != 200:
        if answer.get("error") == "invalid_grant":
            raise CliError("your login expired or was revoked: run `gatehouse login`")
        raise CliError(f"the identity provider refused to refresh: {_oauth_error(answer)}")
    endpoints = Endpoints(token=token_set.token_endpoint, revocation=token_set.revocation_endpoint)
    return TokenSet.from_response(
        answer,
        issuer=token_set.issuer,
        client_id=token_set.client_id,
        endpoints=endpoints,
        previous=token_set,
    )


def default_token_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "gatehouse" / "tokens.json"


class TokenStore:
    """The person's login on disk: one file, 0600, replaced atomically."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_token_path()

    def load(self) -> TokenSet | None:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            return TokenSet(**document)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise CliError(
                f"cannot read the stored login in {self.path} ({exc}): "
                "run `gatehouse logout`, then `gatehouse login`"
            ) from None

    def save(self, tokens: TokenSet) -> None:
        """Write to a private temporary file beside the real one, then rename over it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)  # 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(tokens), handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def forget(self) -> bool:
        """Remove the stored login; False when there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def current(self, settings: LoginSettings | None = None) -> str:
        """A valid access token, refreshed first when less than a minute of it remains."""
        tokens = self._require(settings)
        if tokens.remaining() >= REFRESH_MARGIN:
            return tokens.access_token
        with self._locked():
            tokens = self._require(settings)  # another command may have refreshed meanwhile
            if tokens.remaining() >= REFRESH_MARGIN:
                return tokens.access_token
            if tokens.refresh_token is None:
                if tokens.remaining() > 0:
                    return tokens.access_token
                raise CliError(
                    f"your login expired at {_when(tokens.expires_at)}: run `gatehouse login`"
                )
            try:
                fresh = refresh(settings, tokens)
            except CliError:
                if tokens.remaining() > 0:  # the provider is unreachable, the token still works
                    return tokens.access_token
                raise
            self.save(fresh)
            return fresh.access_token

    def _require(self, settings: LoginSettings | None) -> TokenSet:
        tokens = self.load()
        if tokens is None:
            raise CliError("not logged in: run `gatehouse login`, or set GATEHOUSE_TOKEN")
        if settings is not None and (tokens.issuer, tokens.client_id) != (
            settings.issuer,
            settings.client_id,
        ):
            raise CliError(
                f"the stored login is for {tokens.issuer} ({tokens.client_id}), not "
                f"{settings.issuer} ({settings.client_id}): run `gatehouse login`"
            )
        return tokens

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --- the commands ----------------------------------------------------------------------------

IssuerOpt = Annotated[
    str | None,
    typer.Option(
        "--issuer", envvar="GATEHOUSE_OIDC_ISSUER", help="The identity provider's issuer URL."
    ),
]
ClientIdOpt = Annotated[
    str,
    typer.Option(
        "--client-id",
        envvar="GATEHOUSE_OIDC_CLIENT_ID",
        help="The CLI's client id at the identity provider.",
    ),
]
ScopeOpt = Annotated[
    str,
    typer.Option("--scope", envvar="GATEHOUSE_OIDC_SCOPES", help="Scopes to ask for."),
]
ResourceOpt = Annotated[
    str | None,
    typer.Option(
        "--resource",
        envvar="GATEHOUSE_OIDC_RESOURCE",
        help="Resource indicator (RFC 8707) for the access token, if the provider needs one.",
    ),
]
GroupsClaimOpt = Annotated[
    str,
    typer.Option(
        "--groups-claim", envvar="GATEHOUSE_OIDC_GROUPS_CLAIM", help="Claim that lists groups."
    ),
]


def discover_login(address: str | None = None) -> LoginSettings | None:
    """Ask the control plane how to log in, so that its address is all a person needs."""
    import grpc

    from cli import rpc
    from cli.options import run
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    target = rpc.controlplane_address(address)

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
) -> LoginSettings:
    """Settings from flags and environment, else from the control plane, or a usage error
    that says what is missing."""
    if not issuer:
        discovered = discover_login()
        if discovered is not None:
            return discovered
        raise CliError(
            "no identity provider configured: set GATEHOUSE_OIDC_ISSUER or pass --issuer, or "
            "point GATEHOUSE_CONTROLPLANE at a control plane that has one",
            USAGE,
        )
    return LoginSettings(
        issuer=issuer,
        client_id=client_id,
        scopes=tuple(scope.split()),
        resource=resource or None,
        groups_claim=groups_claim,
    )


def _who(tokens: TokenSet, groups_claim: str) -> dict[str, Any]:
    claims = tokens.claims()
    groups = claims.get(groups_claim)
    if isinstance(groups, str):
        groups = [groups]
    return {
        "subject": claims.get("sub"),
        "email": claims.get("email"),
        "groups": groups if isinstance(groups, list) else [],
        "issuer": tokens.issuer,
        "client_id": tokens.client_id,
        "expires_at": datetime.fromtimestamp(tokens.expires_at, UTC).isoformat(),
        "expired": tokens.remaining() <= 0,
        "refreshable": tokens.refresh_token is not None,
    }


def login(
    browser: Annotated[
        bool, typer.Option("--browser", help="Use a browser on this machine (PKCE).")
    ] = False,
    device: Annotated[
        bool, typer.Option("--device", help="Confirm a code on any device (the default).")
    ] = False,
    issuer: IssuerOpt = None,
    client_id: ClientIdOpt = DEFAULT_CLIENT_ID,
    scope: ScopeOpt = DEFAULT_SCOPE,
    resource: ResourceOpt = None,
    groups_claim: GroupsClaimOpt = "groups",
) -> None:
    """Log in with your identity provider; later commands use the login.

    Example: gatehouse login                # open the URL shown, on any device

    Example: gatehouse login --browser      # a browser on this machine
    """
    from rich.console import Console

    if browser and device:
        raise CliError("choose --browser or --device, not both", USAGE)
    settings = login_settings(issuer, client_id, scope, resource, groups_claim)
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
    store = TokenStore()
    store.save(tokens)
    who = _who(tokens, settings.groups_claim)
    groups = ", ".join(who["groups"]) or "none"
    typer.echo(f"Logged in as {who['subject']} ({who['email'] or 'no e-mail'}); groups: {groups}")


def logout() -> None:
    """Forget the stored login (and tell the identity provider, when it offers revocation).

    Example: gatehouse logout
    """
    store = TokenStore()
    tokens = store.load()
    if tokens is None:
        typer.echo("Not logged in.")
        return
    note = ""
    if tokens.revocation_endpoint and tokens.refresh_token:
        fields = {
            "token": tokens.refresh_token,
            "token_type_hint": "refresh_token",
            "client_id": tokens.client_id,
        }
        try:
            status, answer = _request(tokens.revocation_endpoint, fields=fields, timeout=5.0)
        except CliError as exc:
            note = f" (the identity provider could not be told: {exc.message})"
        else:
            if status != 200:
                note = f" (the identity provider refused revocation: {_oauth_error(answer)})"
    store.forget()
    typer.echo(f"Logged out: removed {store.path}{note}")


def whoami(
    output: OutputOpt = Format.table,
    groups_claim: GroupsClaimOpt = "groups",
) -> None:
    """Show who the stored login says you are: subject, e-mail, groups and expiry.

    Example: gatehouse whoami -o json
    """
    tokens = TokenStore().load()
    if tokens is None:
        raise CliError("not logged in: run `gatehouse login`", REFUSED)
    who = _who(tokens, groups_claim)
    expiry = _when(tokens.expires_at)
    if who["expired"]:
        expiry += " (expired; refreshed on next use)" if who["refreshable"] else " (expired)"
    emit(
        output,
        who,
        ["SUBJECT", "EMAIL", "GROUPS", "EXPIRES", "ISSUER"],
        [[who["subject"], who["email"], ", ".join(who["groups"]), expiry, who["issuer"]]],
    )

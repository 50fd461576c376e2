"""The OAuth 2 flows of ``gatehouse login``, on Authlib's OAuth 2 client (requests session).

Both ways in are for a public client (no secret can hide in a CLI: ``token_endpoint_auth_method
none``):

* the device authorization grant (RFC 8628, the default): the CLI shows a URL and a code, the
  person confirms on any device with a browser, the CLI polls the token endpoint with
  ``grant_type=urn:ietf:params:oauth:grant-type:device_code``;
* authorization code + PKCE (RFC 7636, S256) on a loopback redirect (RFC 8252, ``--browser``):
  the CLI listens on 127.0.0.1 on a random port and opens the browser there.

Authlib builds and parses the protocol messages (authorization URL, PKCE challenge, token,
refresh and revocation requests, OAuth errors); this module decides what the person is told, and
keeps what Authlib leaves to the client: discovery's issuer check, the loopback listener's state
check, the RFC 9207 ``iss`` check and the ID token's nonce.
"""

from __future__ import annotations

import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cli.errors import CliError
from cli.tokenstore import LoginSettings, TokenSet, unverified_claims

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    import requests
    from authlib.integrations.requests_client import OAuth2Session

__all__ = [
    "DEVICE_GRANT",
    "DevicePrompt",
    "Endpoints",
    "browser_login",
    "device_login",
    "discover",
    "refresh",
    "revoke",
]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True)
class Endpoints:
    """What discovery says about where to send the person and the CLI."""

    token: str
    authorization: str | None = None
    device_authorization: str | None = None
    revocation: str | None = None


@dataclass(frozen=True)
class DevicePrompt:
    """What to tell the person: where to go and which code to expect there."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


#: The most an identity provider's answer may declare; a token response is a few KiB.
MAX_RESPONSE = 1024 * 1024


def _client(client_id: str, timeout: float, **options: Any) -> OAuth2Session:
    from authlib.integrations.requests_client import OAuth2Session

    client = OAuth2Session(
        client_id=client_id,
        token_endpoint_auth_method="none",
        revocation_endpoint_auth_method="none",
        default_timeout=timeout,
        **options,
    )
    client.hooks["response"].append(_bounded)
    return client


def _bounded(response: requests.Response, *args: object, **kwargs: object) -> None:
    """Refuse an answer that declares more than MAX_RESPONSE, before its body is read."""
    length = response.headers.get("Content-Length", "0")
    if not length.isdigit() or int(length) > MAX_RESPONSE:
        response.close()
        raise CliError(
            f"{response.url} answered with {length} bytes (at most {MAX_RESPONSE} are read)"
        )


def _described(error: object, description: object) -> str:
    return f"{error}: {description}" if description else str(error)


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    """Transport failures and non-JSON answers in plain words (OAuth errors pass through)."""
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise CliError(f"{url} answered HTTP {status}") from None
    except requests.RequestException as exc:
        raise CliError(f"cannot reach the identity provider at {url}: {exc}") from None
    except ValueError as exc:  # a body that is not a JSON object
        raise CliError(f"{url} answered without a JSON object ({exc})") from None


def _json(
    client: OAuth2Session, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    """A plain request (no token attached) whose answer must be a JSON object."""
    with _reaching(url):
        response = client.request(
            method, url, withhold_token=True, headers={"Accept": "application/json"}, **kwargs
        )
        document = response.json() if response.content else {}
    if not isinstance(document, dict):
        raise CliError(f"{url} answered HTTP {response.status_code} without a JSON object")
    return response.status_code, document


def discover(settings: LoginSettings) -> Endpoints:
    """The provider's endpoints from its discovery document (which must name it exactly)."""
    url = settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
    with _client(settings.client_id, settings.timeout) as client:
        status, document = _json(client, "GET", url)
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


def _tokens(answer: Mapping[str, Any], settings: LoginSettings, endpoints: Endpoints) -> TokenSet:
    return TokenSet.from_response(
        answer,
        issuer=settings.issuer,
        client_id=settings.client_id,
        token_endpoint=endpoints.token,
        revocation_endpoint=endpoints.revocation,
        resource=settings.resource,
    )


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
    from authlib.integrations.requests_client import OAuthError

    endpoints = discover(settings)
    if endpoints.device_authorization is None:
        raise CliError(
            f"{settings.issuer} does not offer the device grant: use `gatehouse login --browser`"
        )
    fields = {"client_id": settings.client_id, "scope": " ".join(settings.scopes)}
    if settings.resource:
        fields["resource"] = settings.resource
    with _client(settings.client_id, settings.timeout) as client:
        status, started = _json(client, "POST", endpoints.device_authorization, data=fields)
        if status != 200 or not isinstance(started.get("device_code"), str):
            raise CliError(
                "the identity provider refused to start a login: "
                + _described(
                    started.get("error") or f"HTTP {status}", started.get("error_description")
                )
            )
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
        expired = "the code expired before it was confirmed: run `gatehouse login` again"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CliError(expired)
            if on_wait is not None:
                on_wait(left)
            sleep(interval)
            try:
                with _reaching(endpoints.token):
                    answer = client.fetch_token(
                        endpoints.token, grant_type=DEVICE_GRANT, device_code=started["device_code"]
                    )
            except OAuthError as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":
                    interval += 5
                    continue
                if exc.error == "access_denied":
                    raise CliError("the login was denied at the identity provider") from None
                if exc.error == "expired_token":
                    raise CliError(expired) from None
                why = _described(exc.error, exc.description)
                raise CliError(f"the identity provider refused the login: {why}") from None
            return _tokens(answer, settings, endpoints)


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

    from authlib.common.security import generate_token
    from authlib.integrations.requests_client import OAuthError

    endpoints = discover(settings)
    if endpoints.authorization is None:
        raise CliError(f"{settings.issuer} names no authorization endpoint: use the device login")
    callback = _Callback(state=secrets.token_urlsafe(24))
    server = HTTPServer(("127.0.0.1", 0), _callback_handler(callback))
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
    client = _client(
        settings.client_id,
        settings.timeout,
        scope=" ".join(settings.scopes),
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
    )
    verifier = generate_token(64)
    nonce = secrets.token_urlsafe(24)
    url, _ = client.create_authorization_url(
        endpoints.authorization,
        state=callback.state,
        code_verifier=verifier,
        nonce=nonce,
        resource=settings.resource,
    )
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
        raise CliError(
            "the identity provider refused the login: "
            + _described(params["error"], params.get("error_description"))
        )
    if "iss" in params and params["iss"] != settings.issuer:  # RFC 9207: mix-up defence
        raise CliError(f"the answer came from issuer {params['iss']!r}, not {settings.issuer!r}")
    if not params.get("code"):
        raise CliError("the browser came back without an authorization code")
    with client:
        try:
            with _reaching(endpoints.token):
                answer = client.fetch_token(
                    endpoints.token,
                    grant_type="authorization_code",
                    code=params["code"],
                    code_verifier=verifier,
                )
        except OAuthError as exc:
            raise CliError(
                f"the identity provider refused the code: {_described(exc.error, exc.description)}"
            ) from None
    tokens = _tokens(answer, settings, endpoints)
    id_claims = unverified_claims(tokens.id_token) if tokens.id_token else None
    if id_claims is not None and id_claims.get("nonce") != nonce:
        raise CliError("the ID token does not carry this login's nonce: refusing it")
    return tokens


# --- refresh and revocation ----------------------------------------------------------------


def refresh(settings: LoginSettings | None, token_set: TokenSet) -> TokenSet:
    """New tokens from the refresh token, at the endpoint the login used."""
    from authlib.integrations.requests_client import OAuthError

    if token_set.refresh_token is None:
        raise CliError("the login cannot be refreshed (no refresh token): run `gatehouse login`")
    resource = settings.resource if settings is not None else token_set.resource
    extra = {"resource": resource} if resource else {}
    timeout = settings.timeout if settings is not None else 10.0
    with _client(token_set.client_id, timeout) as client:
        try:
            with _reaching(token_set.token_endpoint):
                answer = client.refresh_token(
                    token_set.token_endpoint, refresh_token=token_set.refresh_token, **extra
                )
        except OAuthError as exc:
            if exc.error == "invalid_grant":
                raise CliError("your login expired or was revoked: run `gatehouse login`") from None
            why = _described(exc.error, exc.description)
            raise CliError(f"the identity provider refused to refresh: {why}") from None
    return TokenSet.from_response(
        answer,
        issuer=token_set.issuer,
        client_id=token_set.client_id,
        token_endpoint=token_set.token_endpoint,
        revocation_endpoint=token_set.revocation_endpoint,
        resource=resource,
        previous=token_set,
    )


def revoke(token_set: TokenSet) -> str | None:
    """Revoke the refresh token (RFC 7009); why it could not be, or None when it was."""
    if not (token_set.revocation_endpoint and token_set.refresh_token):
        return None
    url = token_set.revocation_endpoint
    with _client(token_set.client_id, 5.0) as client:
        try:
            with _reaching(url):
                response = client.revoke_token(
                    url, token=token_set.refresh_token, token_type_hint="refresh_token"
                )
        except CliError as exc:
            return f"the identity provider could not be told: {exc.message}"
    if response.status_code != 200:
        return f"the identity provider refused revocation: HTTP {response.status_code}"
    return None

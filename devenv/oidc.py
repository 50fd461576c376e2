"""Start a throwaway OpenID Provider (npm ``oidc-provider``) and play a person logging in.

Tests need a real, certified provider that does the device grant, PKCE and refresh, and whose
signing keys they control (to rotate them, or to craft tokens the control plane must refuse).
``devenv/oidc/provider.mjs`` is that provider; this module writes its configuration, runs it
with Node.js on a free loopback port and waits until discovery answers. Everything lives under
one ``base_dir``:

* ``base_dir/config.json``        port, keys (private JWKs, hence 0600), clients, accounts, TTLs;
* ``base_dir/oidc-provider.log``  the node process's output, shown when it fails to start.

The provider's ``devInteractions`` log anyone in by name (any password), so ``OidcProvider``
can also act as the person at the browser: ``approve_device`` and ``approve_authorization``
walk the real HTML pages (forms, cookies, redirects) with the standard library.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

__all__ = [
    "AUDIENCE",
    "CLIENT_ID",
    "DEFAULT_ACCOUNTS",
    "NODE_DIR",
    "OTHER_AUDIENCE",
    "OTHER_RESOURCE",
    "RESOURCE",
    "LoginPagesError",
    "OidcProvider",
    "OidcStartError",
    "Ttl",
    "act_as_browser",
    "ensure_node_modules",
    "new_signing_key",
    "public_jwk",
    "start_oidc_provider",
]

from devenv.processes import PortTaken, Service, free_port, stop_process, tail, wait_ready

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
NODE_DIR = Path(__file__).resolve().parent / "oidc-provider"  # a Node project, not a package
#: The CLI's registration: a public native client (RFC 8252), loopback redirects on any port.
CLIENT_ID = "gatehouse-cli"
#: The resource indicator (RFC 8707) a login asks for by default, and its tokens' audience.
RESOURCE = "urn:gatehouse"
AUDIENCE = "gatehouse"
#: A second resource server, so tests can get real tokens meant for someone else.
OTHER_RESOURCE = "urn:other-service"
OTHER_AUDIENCE = "other-service"
DEFAULT_ACCOUNTS: Mapping[str, Mapping[str, Any]] = {
    "alice": {"email": "alice@example.com", "name": "Alice", "groups": ["dba"]},
    "bob": {"email": "bob@example.com", "name": "Bob", "groups": ["security"]},
}
_PORT_ATTEMPTS = 5
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class OidcStartError(RuntimeError):
    """The provider could not be installed or started; the message says what to do."""


class LoginPagesError(RuntimeError):
    """The provider's pages did not lead where a person's login should (the page says why)."""


@dataclass(frozen=True)
class Ttl:
    """Token lifetimes in seconds; tests shorten them to watch tokens expire."""

    access_token: int = 300
    id_token: int = 300
    refresh_token: int = 3600
    device_code: int = 120

    def as_config(self) -> dict[str, int]:
        return {
            "AccessToken": self.access_token,
            "IdToken": self.id_token,
            "RefreshToken": self.refresh_token,
            "DeviceCode": self.device_code,
            "Interaction": 600,
            "Session": 3600,
            "Grant": max(3600, self.refresh_token),
        }


def new_signing_key(alg: str = "RS256", kid: str | None = None) -> dict[str, Any]:
    """A fresh private JWK for ``alg`` (RS256, ES256 or EdDSA), with ``kid``, ``alg``, ``use``."""
    from joserfc.jwk import ECKey, Key, KeyParameters, OKPKey, RSAKey

    parameters: KeyParameters = {"alg": alg, "use": "sig"}
    if kid is not None:
        parameters["kid"] = kid
    key: Key
    if alg in ("RS256", "PS256"):
        key = RSAKey.generate_key(2048, parameters=parameters)
    elif alg == "ES256":
        key = ECKey.generate_key("P-256", parameters=parameters)
    elif alg in ("EdDSA", "Ed25519"):
        key = OKPKey.generate_key("Ed25519", parameters=parameters)
    else:
        raise ValueError(f"no key type known for alg {alg!r}: use RS256, ES256 or EdDSA")
    key.ensure_kid()
    return dict(key.as_dict(private=True))


def public_jwk(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The public half of a JWK, as a provider publishes it."""
    return {name: value for name, value in jwk.items() if name not in _PRIVATE_MEMBERS}


def ensure_node_modules(node_dir: Path = NODE_DIR, *, timeout: float = 300) -> None:
    """``npm ci`` from the committed lockfile unless the pinned oidc-provider is installed."""
    wanted = json.loads((node_dir / "package.json").read_text())["dependencies"]["oidc-provider"]
    installed = node_dir / "node_modules" / "oidc-provider" / "package.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(installed.read_text()).get("version") == wanted:
            return
    npm = shutil.which("npm")
    if npm is None:
        raise OidcStartError(
            "npm is not on PATH: install Node.js 20 or later (with npm), then run "
            f"`npm ci` in {node_dir}"
        )
    log.info("installing oidc-provider %s with npm ci in %s", wanted, node_dir)
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=node_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise OidcStartError(f"could not run npm ci in {node_dir}: {exc}") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-30:]
        raise OidcStartError(
            f"npm ci failed in {node_dir} (status {result.returncode}); is the npm registry "
            "reachable? It printed:\n" + "\n".join(output)
        )


@dataclass
class OidcProvider(Service):
    """A running throwaway provider; ``stop()`` (or leaving the ``with`` block) ends it."""

    issuer: str
    port: int
    base_dir: Path
    keys: list[dict[str, Any]]
    config: dict[str, Any] = field(repr=False)
    client_id: str = CLIENT_ID
    audience: str = AUDIENCE
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def log_file(self) -> Path:
        return self.base_dir / "oidc-provider.log"

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/jwks"

    @property
    def signing_key(self) -> dict[str, Any]:
        """The private JWK the provider signs with: the first RS256 one (its default alg)."""
        return next(k for k in self.keys if k.get("alg") == "RS256")

    def restart_with_keys(self, keys: Sequence[Mapping[str, Any]]) -> None:
        """Rotate: the same issuer and port, another key set (the first RS256 key signs).

        The provider keeps its state in memory, so sessions, grants and refresh tokens issued
        before the restart are gone; tokens already issued stay verifiable for as long as their
        key is published.
        """
        self.stop()
        self.keys = _key_list(keys)
        self.config["jwks"] = {"keys": self.keys}
        _write_config(self.base_dir, self.config)
        if not _launch(self, ready_timeout=20.0):
            raise OidcStartError(
                f"port {self.port} was taken while the provider restarted\n{tail(self.log_file)}"
            )

    def set_accounts(self, accounts: Mapping[str, Mapping[str, Any]]) -> None:
        """Change who exists and in which groups (an administrator editing the directory).

        The provider reads its accounts at start, so it restarts (same issuer, port and keys):
        tokens already issued keep their old claims and stay verifiable until they expire,
        exactly as with a real issuer; only new logins see the change.
        """
        self.stop()
        self.config["accounts"] = {name: dict(claims) for name, claims in accounts.items()}
        _write_config(self.base_dir, self.config)
        if not _launch(self, ready_timeout=20.0):
            raise OidcStartError(
                f"port {self.port} was taken while the provider restarted\n{tail(self.log_file)}"
            )

    def stop(self) -> None:
        """SIGTERM, escalating to SIGKILL; idempotent."""
        process, self._process = self._process, None
        self._untrack()
        if process is None:
            return
        stop_process(process, "oidc-provider", ((signal.SIGTERM, 5), (signal.SIGKILL, 5)))

    def approve_device(self, verification_uri: str, user: str, *, deny: bool = False) -> None:
        """Be the person who opens ``verification_uri_complete``, logs in and confirms.

        With ``deny`` the person presses "Abort" on the confirmation page instead, so the
        device's next poll gets ``access_denied``.
        """
        act_as_browser(verification_uri, user, deny=deny)

    def approve_authorization(self, authorization_url: str, user: str) -> str:
        """Be the browser sent to ``authorization_url``: log in, consent, follow the redirect.

        Returns the body of the last page, which for a loopback ``redirect_uri`` is what the
        CLI's local server answered.
        """
        return act_as_browser(authorization_url, user)


def start_oidc_provider(
    base_dir: Path,
    *,
    keys: Sequence[Mapping[str, Any]] | None = None,
    port: int | None = None,
    ttl: Ttl | None = None,
    accounts: Mapping[str, Mapping[str, Any]] = DEFAULT_ACCOUNTS,
    jwks_max_age: int | None = None,
    device_interval: int = 1,
    ready_timeout: float = 20.0,
) -> OidcProvider:
    """Run ``provider.mjs`` on ``port`` (None: a free one) and wait until discovery answers.

    ``keys`` are private JWKs (``new_signing_key()``); the first RS256 key signs, all are
    published.
    ``jwks_max_age`` makes the JWKS answer with ``Cache-Control: max-age``.
    """
    if shutil.which("node") is None:
        raise OidcStartError("node is not on PATH: install Node.js 20 or later")
    ensure_node_modules()
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    key_list = _key_list(keys) if keys else [new_signing_key("RS256")]
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        issuer = f"http://{HOST}:{chosen}"
        config = {
            "issuer": issuer,
            "port": chosen,
            "jwks": {"keys": key_list},
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_name": "Gatehouse CLI",
                    "application_type": "native",
                    "token_endpoint_auth_method": "none",
                    "grant_types": [
                        "authorization_code",
                        "refresh_token",
                        "urn:ietf:params:oauth:grant-type:device_code",
                    ],
                    "response_types": ["code"],
                    "redirect_uris": [f"http://{HOST}/callback"],
                }
            ],
            "accounts": {name: dict(claims) for name, claims in accounts.items()},
            "resources": {
                RESOURCE: {"audience": AUDIENCE},
                OTHER_RESOURCE: {"audience": OTHER_AUDIENCE},
            },
            "defaultResource": RESOURCE,
            "ttl": (ttl or Ttl()).as_config(),
            "deviceInterval": device_interval,
            "jwksMaxAge": jwks_max_age,
            "cookieKeys": [secrets.token_urlsafe(24)],
        }
        _write_config(base_dir, config)
        provider = OidcProvider(issuer, chosen, base_dir, key_list, config)
        try:
            if _launch(provider, ready_timeout=ready_timeout):
                return provider
        except BaseException:
            provider.stop()
            raise
        provider.stop()
        log.info("port %d was taken before oidc-provider could bind it; trying another", chosen)
    raise OidcStartError(
        f"no free port found after {attempts} attempts; pass port= explicitly\n"
        f"{tail(base_dir / 'oidc-provider.log')}"
    )


def _key_list(keys: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if not any(k.get("alg") == "RS256" for k in keys):
        raise OidcStartError("the provider signs its tokens with RS256: include an RS256 key")
    return [dict(k) for k in keys]


def _write_config(base_dir: Path, config: Mapping[str, Any]) -> None:
    """The config holds private keys: readable by the owner only, from the start."""
    path = base_dir / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle, indent=1)


def _launch(provider: OidcProvider, *, ready_timeout: float) -> bool:
    """Start node and wait for discovery; False when the port turned out to be taken."""
    node = shutil.which("node") or "node"
    offset = provider.log_file.stat().st_size if provider.log_file.exists() else 0
    try:
        with provider.log_file.open("ab") as log_fh:
            provider._process = subprocess.Popen(
                [node, str(NODE_DIR / "provider.mjs"), str(provider.base_dir / "config.json")],
                cwd=NODE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        raise OidcStartError(f"could not run {node}: {exc}") from exc
    provider._track()

    def discovery() -> str | None:
        try:
            with urllib.request.urlopen(provider.discovery_url, timeout=2) as response:
                issuer = json.load(response).get("issuer")
        except (OSError, ValueError) as exc:
            return str(exc)
        return None if issuer == provider.issuer else f"discovery names issuer {issuer!r}"

    try:
        wait_ready(
            provider._process,
            discovery,
            name="oidc-provider",
            log_file=provider.log_file,
            offset=offset,
            timeout=ready_timeout,
            port_taken="EADDRINUSE",
            error=OidcStartError,
        )
    except PortTaken:
        return False
    return True


def act_as_browser(url: str, user: str, *, deny: bool = False) -> str:
    """Open ``url`` in a fresh "browser" and click through the provider's pages as ``user``.

    Returns the last page's body. Usable from any process: a test can point ``$BROWSER`` at a
    script that calls this, and drive ``gatehouse login --browser`` exactly as a person would.
    """
    return _Browser().walk(url, user, deny=deny)


@dataclass
class _Form:
    action: str
    fields: dict[str, str]


class _FormParser(HTMLParser):
    """The forms on a page and their named inputs: all a person's clicks need here."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self._current: _Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = _Form(values.get("action", ""), {})
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and values.get("name"):
            self._current.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


class _Browser:
    """A person's browser, minus JavaScript: keeps cookies, follows redirects, submits forms."""

    _MAX_STEPS = 12

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def walk(self, url: str, user: str, *, deny: bool = False) -> str:
        """Open ``url`` and press on through every page the provider shows, as ``user``.

        Pages: the auto-submitted device form, the device confirmation, the login form, the
        consent form; the walk ends on a page without a form (the device "success" page, or
        whatever the redirect target answered).
        """
        page_url, body = self._open(url)
        for _ in range(self._MAX_STEPS):
            parser = _FormParser()
            parser.feed(body)
            if not parser.forms:
                return body
            form = parser.forms[0]
            fields = dict(form.fields)
            aborting = False
            if fields.get("prompt") == "login":
                fields.update(login=user, password="any password")
            elif "confirm" in fields and deny:
                fields["abort"] = "yes"
                aborting = True
            page_url, body = self._open(urllib.parse.urljoin(page_url, form.action), fields)
            if aborting:
                return body
        raise LoginPagesError(f"the login for {user!r} did not finish in {self._MAX_STEPS} pages")

    def _open(self, url: str, fields: Mapping[str, str] | None = None) -> tuple[str, str]:
        data = urllib.parse.urlencode(fields).encode() if fields is not None else None
        try:
            with self._opener.open(url, data=data, timeout=10) as response:
                return response.geturl(), response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", errors="replace")
            raise LoginPagesError(
                f"{url} answered {exc.code} while logging in: {_page_text(text)}"
            ) from None


def _page_text(html: str, limit: int = 300) -> str:
    """The visible words of an error page, for a message a person can read."""

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self._skip = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self._skip = tag in ("style", "script")

        def handle_endtag(self, tag: str) -> None:
            self._skip = False

        def handle_data(self, data: str) -> None:
            if not self._skip and data.strip():
                self.parts.append(data.strip())

    parser = Text()
    parser.feed(html)
    return " ".join(parser.parts)[:limit]

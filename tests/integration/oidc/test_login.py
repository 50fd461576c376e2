"""The CLI's side of OIDC against a real provider: device grant, PKCE, refresh, the token file."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cli.errors import CliError
from cli.login import (
    DevicePrompt,
    LoginSettings,
    TokenSet,
    TokenStore,
    browser_login,
    default_token_path,
    device_login,
    refresh,
)
from cli.main import main
from controlplane.auth.oidc import OidcValidator
from devenv.oidc import CLIENT_ID, OidcProvider, act_as_browser
from devenv.stack import REPO
from tests.integration.oidc.conftest import LogIn, device_log_in

# --- the device authorization grant -------------------------------------------------------


async def test_device_login_end_to_end_gives_tokens_the_control_plane_accepts(
    oidc: OidcProvider, settings: LoginSettings, validator: OidcValidator
) -> None:
    prompts: list[DevicePrompt] = []
    waits: list[float] = []
    # The person takes a moment, so the CLI sees authorization_pending before the tokens.
    tokens = device_log_in(oidc, settings, "alice", delay=1.5, prompts=prompts, waits=waits)

    (prompt,) = prompts
    assert prompt.verification_uri == f"{oidc.issuer}/device"
    assert prompt.user_code and prompt.user_code in (prompt.verification_uri_complete or "")
    assert len(waits) >= 2, "the CLI should have polled again after authorization_pending"
    assert tokens.refresh_token and tokens.id_token
    assert tokens.remaining() > 200

    claims = await validator.validate(tokens.access_token)
    assert (claims.subject, claims.email, claims.groups) == ("alice", "alice@example.com", ("dba",))
    assert claims.token_type == "at+jwt"
    assert claims.client_id == CLIENT_ID
    assert claims.identity().as_user() == {
        "sub": "alice",
        "email": "alice@example.com",
        "groups": ["dba"],
    }


def test_device_login_denied_by_the_person_stops_with_a_clear_message(log_in: LogIn) -> None:
    with pytest.raises(CliError, match="the login was denied at the identity provider"):
        log_in("alice", deny=True)


class _ScriptedProvider(BaseHTTPRequestHandler):
    """Discovery, device authorization and a token endpoint answering from a script."""

    answers: list[dict[str, Any]] = []
    #: (path, form fields) of every POST, to check what the CLI sent.
    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self) -> None:
        base = f"http://{self.headers['Host']}"
        self._json(
            200,
            {
                "issuer": base,
                "token_endpoint": base + "/token",
                "device_authorization_endpoint": base + "/device/auth",
                "revocation_endpoint": base + "/revoke",
            },
        )

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.seen.append((self.path, dict(urllib.parse.parse_qsl(body))))
        if self.path == "/device/auth":
            self._json(
                200,
                {
                    "device_code": "dc",
                    "user_code": "ABCD-EFGH",
                    "verification_uri": "https://idp.example/device",
                    "expires_in": 600,
                    "interval": 2,
                },
            )
        else:
            answer = self.answers.pop(0)
            status = int(answer.pop("_status", 200 if "access_token" in answer else 400))
            self._json(status, answer)

    def _json(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


Seen = list[tuple[str, dict[str, str]]]


@pytest.fixture
def seen() -> Seen:
    return []


@pytest.fixture
def scripted(seen: Seen) -> Iterator[tuple[LoginSettings, list[dict[str, Any]]]]:
    """A stand-in token endpoint: the real provider never says slow_down or expired_token."""
    answers: list[dict[str, Any]] = []
    handler = type("Handler", (_ScriptedProvider,), {"answers": answers, "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield LoginSettings(issuer=f"http://127.0.0.1:{server.server_address[1]}"), answers
    server.shutdown()
    server.server_close()


def test_device_polling_respects_interval_and_slows_down_when_told(
    scripted: tuple[LoginSettings, list[dict[str, Any]]],
) -> None:
    settings, answers = scripted
    answers += [
        {"error": "authorization_pending"},
        {"error": "slow_down"},
        {"error": "authorization_pending"},
        {"access_token": "at", "expires_in": 60, "token_type": "Bearer"},
    ]
    pauses: list[float] = []
    tokens = device_login(settings, on_prompt=lambda p: None, sleep=pauses.append)
    assert pauses == [2, 2, 7, 7]  # interval 2; +5 s from the slow_down on
    assert tokens.access_token == "at"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("expired_token", "the code expired before it was confirmed"),
        ("access_denied", "the login was denied"),
        ("invalid_client", "refused the login: invalid_client"),
    ],
)
def test_device_polling_stops_on_final_errors(
    scripted: tuple[LoginSettings, list[dict[str, Any]]], error: str, message: str
) -> None:
    settings, answers = scripted
    answers += [{"error": "authorization_pending"}, {"error": error}]
    with pytest.raises(CliError, match=message):
        device_login(settings, on_prompt=lambda p: None, sleep=lambda s: None)
    assert not answers


def test_device_login_sends_scopes_and_the_resource_indicator_as_a_public_client(
    scripted: tuple[LoginSettings, list[dict[str, Any]]], seen: Seen
) -> None:
    settings, answers = scripted
    settings = replace(settings, scopes=("openid", "offline_access"), resource="urn:gatehouse")
    answers += [
        {"access_token": "at", "refresh_token": "rt", "expires_in": 60, "token_type": "Bearer"},
        {"access_token": "at2", "expires_in": 60, "token_type": "Bearer"},
    ]
    tokens = device_login(settings, on_prompt=lambda p: None, sleep=lambda s: None)
    # As a later command refreshes: from the stored login alone, without the settings.
    fresh = refresh(None, tokens)
    assert fresh.refresh_token == "rt"  # the provider did not rotate it: the old one stays
    assert fresh.resource == "urn:gatehouse"

    (start_path, start), (poll_path, poll), (refresh_path, renewal) = seen
    assert start_path == "/device/auth"
    assert start == {
        "client_id": settings.client_id,
        "scope": "openid offline_access",
        "resource": "urn:gatehouse",
    }
    assert poll_path == "/token"
    assert poll == {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": "dc",
        "client_id": settings.client_id,
    }
    assert refresh_path == "/token"
    assert renewal == {
        "grant_type": "refresh_token",
        "refresh_token": "rt",
        "resource": "urn:gatehouse",
        "client_id": settings.client_id,
    }


def test_a_provider_that_fails_or_is_gone_is_named_in_the_error(
    scripted: tuple[LoginSettings, list[dict[str, Any]]],
) -> None:
    settings, answers = scripted
    answers.append({"_status": 503, "error": "temporarily_unavailable"})
    with pytest.raises(CliError, match=r"/token answered HTTP 503"):
        device_login(settings, on_prompt=lambda p: None, sleep=lambda s: None)

    answers.append({"_status": 400, "error": "invalid_request", "padding": "x" * 2**20})
    with pytest.raises(CliError, match=r"/token answered with \d+ bytes \(at most 1048576"):
        device_login(settings, on_prompt=lambda p: None, sleep=lambda s: None)

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        gone = LoginSettings(issuer=f"http://127.0.0.1:{probe.getsockname()[1]}")
    with pytest.raises(
        CliError, match=r"cannot reach the identity provider at http://127\.0\.0\.1"
    ):
        device_login(gone, on_prompt=lambda p: None)
    with pytest.raises(CliError, match="cannot reach the identity provider"):
        refresh(gone, _sample(token_endpoint=gone.issuer + "/token"))


# --- authorization code + PKCE on a loopback redirect -------------------------------------


async def test_browser_login_uses_pkce_on_a_loopback_redirect(
    oidc: OidcProvider, settings: LoginSettings, validator: OidcValidator
) -> None:
    seen: dict[str, Any] = {}
    failures: list[BaseException] = []

    def browser(url: str) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        seen.update(query)
        # Something else knocks on the loopback port first: it must not end the login.
        stray = query["redirect_uri"] + "?code=planted&state=not-this-login"
        try:
            urllib.request.urlopen(stray, timeout=5)
        except urllib.error.HTTPError as exc:
            seen["stray_status"] = exc.code
        try:
            seen["page"] = act_as_browser(url, "bob")
        except BaseException as exc:
            failures.append(exc)

    def open_browser(url: str) -> bool:
        threading.Thread(target=browser, args=(url,), daemon=True).start()
        return True

    tokens = browser_login(settings, open_browser=open_browser, timeout=20)
    assert not failures

    assert seen["code_challenge_method"] == "S256"
    assert len(seen["code_challenge"]) == 43 and "code_verifier" not in seen
    redirect = urllib.parse.urlsplit(seen["redirect_uri"])
    assert (redirect.hostname, redirect.path) == ("127.0.0.1", "/callback") and redirect.port
    assert seen["stray_status"] == 400
    assert "Logged in" in seen["page"]

    claims = await validator.validate(tokens.access_token)
    assert (claims.subject, claims.groups) == ("bob", ("security",))
    assert claims.email == "bob@example.com"


# --- refresh --------------------------------------------------------------------------------


async def test_refresh_gives_a_new_valid_access_token_and_retires_the_old_refresh_token(
    log_in: LogIn, settings: LoginSettings, validator: OidcValidator
) -> None:
    first = log_in("bob")
    second = refresh(settings, first)

    assert second.access_token != first.access_token
    assert second.refresh_token and second.refresh_token != first.refresh_token
    claims = await validator.validate(second.access_token)
    assert claims.subject == "bob" and claims.groups == ("security",)

    with pytest.raises(CliError, match="your login expired or was revoked"):
        refresh(settings, first)  # a rotated refresh token is spent


def test_current_refreshes_when_less_than_a_minute_remains(
    tmp_path: Path, log_in: LogIn, settings: LoginSettings
) -> None:
    store = TokenStore(tmp_path / "gatehouse" / "tokens.json")
    tokens = log_in("alice")

    store.save(tokens)
    assert store.current(settings) == tokens.access_token  # minutes left: used as is

    store.save(replace(tokens, expires_at=time.time() + 30))
    fresh = store.current(settings)
    assert fresh != tokens.access_token
    stored = store.load()
    assert stored is not None and stored.access_token == fresh and stored.remaining() > 200
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


# --- the token file -------------------------------------------------------------------------


def _sample(**changes: Any) -> TokenSet:
    base = TokenSet(
        access_token="a.b.c",
        expires_at=time.time() + 600,
        issuer="https://idp.example",
        client_id=CLIENT_ID,
        token_endpoint="https://idp.example/token",
        refresh_token="r",
    )
    return replace(base, **changes)


def test_token_store_writes_mode_0600_atomically_whatever_the_umask(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "config" / "gatehouse" / "tokens.json")
    old_umask = os.umask(0)
    try:
        store.save(_sample())
        store.save(_sample(access_token="x.y.z"))
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert [p.name for p in store.path.parent.iterdir()] == ["tokens.json"]  # no temp files
    loaded = store.load()
    assert loaded is not None and loaded.access_token == "x.y.z"

    assert store.forget() is True
    assert store.load() is None and store.forget() is False


def test_token_store_lives_in_the_users_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_token_path() == tmp_path / "xdg" / "gatehouse" / "tokens.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_token_path() == tmp_path / "home" / ".config" / "gatehouse" / "tokens.json"


def test_token_store_explains_missing_mismatched_and_expired_logins(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    settings = LoginSettings(issuer="https://idp.example", client_id=CLIENT_ID)
    with pytest.raises(CliError, match="not logged in: run `gatehouse login`"):
        store.current(settings)

    store.save(_sample(issuer="https://other.example"))
    with pytest.raises(CliError, match=r"the stored login is for https://other\.example"):
        store.current(settings)

    store.save(_sample(expires_at=time.time() - 5, refresh_token=None))
    with pytest.raises(CliError, match="your login expired at"):
        store.current(settings)

    store.path.write_text("{not json")
    with pytest.raises(CliError, match="cannot read the stored login"):
        store.load()


def test_settings_refuse_a_plaintext_issuer_off_loopback() -> None:
    with pytest.raises(CliError, match="must be an https:// URL"):
        LoginSettings(issuer="http://idp.example")


# --- the commands ---------------------------------------------------------------------------


def test_whoami_and_logout_commands(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_in: LogIn,
    settings: LoginSettings,
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    tokens = log_in("alice")
    TokenStore().save(tokens)

    assert main(["whoami", "-o", "json"]) == 0
    who = json.loads(capsys.readouterr().out)
    assert (who["subject"], who["email"], who["groups"]) == ("alice", "alice@example.com", ["dba"])
    assert who["expired"] is False and who["refreshable"] is True

    assert main(["whoami"]) == 0
    table = capsys.readouterr().out
    assert "alice@example.com" in table and "dba" in table

    assert main(["logout"]) == 0
    assert "Logged out" in capsys.readouterr().out
    assert not (tmp_path / "gatehouse" / "tokens.json").exists()
    with pytest.raises(CliError, match="expired or was revoked"):
        refresh(settings, tokens)  # logout revoked the refresh token at the provider

    assert main(["whoami"]) == 1
    assert "not logged in" in capsys.readouterr().err


def _run_login(oidc: OidcProvider, tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "login", *args],
        cwd=REPO,
        env={
            **os.environ,
            "GATEHOUSE_OIDC_ISSUER": oidc.issuer,
            "GATEHOUSE_OIDC_CLIENT_ID": CLIENT_ID,
            "XDG_CONFIG_HOME": str(tmp_path),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_login_command_with_the_device_grant_as_a_person_sees_it(
    oidc: OidcProvider, tmp_path: Path
) -> None:
    process = _run_login(oidc, tmp_path)
    assert process.stderr is not None
    shown = []
    for line in process.stderr:
        shown.append(line)
        if "/device?user_code=" in line:
            oidc.approve_device(line.strip(), "bob")
            break
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, "".join(shown) + err
    assert "open this page and confirm the code" in "".join(shown)
    assert "Logged in as bob (bob@example.com); groups: security" in out
    stored = tmp_path / "gatehouse" / "tokens.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_login_command_with_a_browser(oidc: OidcProvider, tmp_path: Path) -> None:
    # $BROWSER is how webbrowser.open finds a browser: here, a script that plays the person.
    script = tmp_path / "browser.py"
    script.write_text(
        "import sys\nfrom devenv.oidc import act_as_browser\nact_as_browser(sys.argv[1], 'alice')\n"
    )
    process = _run_login(oidc, tmp_path, "--browser", BROWSER=f"{sys.executable} {script} %s")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "If it does not open, visit" in err
    assert "Logged in as alice (alice@example.com); groups: dba" in out

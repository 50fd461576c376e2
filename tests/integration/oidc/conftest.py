"""A real OpenID Provider for the OIDC tests: npm ``oidc-provider`` run with Node.js.

The Node dependencies come from the committed lockfile (``npm ci``) the first time, so a fresh
checkout only needs Node.js and npm. One provider serves the whole session; tests that restart
it (key rotation) start their own. Its published keys are RS256 (which signs), ES256 and EdDSA,
all generated here, so tests can also craft tokens the provider's keys vouch for.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import JWKRegistry

from cli.login import DevicePrompt, LoginSettings, TokenSet, device_login
from controlplane.auth.oidc import OidcSettings, OidcValidator
from devenv.oidc import (
    AUDIENCE,
    CLIENT_ID,
    OidcProvider,
    ensure_node_modules,
    new_signing_key,
    start_oidc_provider,
)

LogIn = Callable[..., TokenSet]
Craft = Callable[..., str]


@pytest.fixture(scope="session")
def node_modules() -> None:
    """``npm ci --no-audit --no-fund`` in devenv/oidc unless oidc-provider is installed."""
    ensure_node_modules()


@pytest.fixture(scope="session")
def oidc(tmp_path_factory: pytest.TempPathFactory, node_modules: None) -> Iterator[OidcProvider]:
    keys = [new_signing_key("RS256"), new_signing_key("ES256"), new_signing_key("EdDSA")]
    provider = start_oidc_provider(tmp_path_factory.mktemp("oidc"), keys=keys)
    yield provider
    provider.stop()


def settings_for(provider: OidcProvider, **changes: Any) -> LoginSettings:
    return LoginSettings(issuer=provider.issuer, client_id=CLIENT_ID, **changes)


@pytest.fixture
def settings(oidc: OidcProvider) -> LoginSettings:
    return settings_for(oidc)


@pytest.fixture
async def validator(oidc: OidcProvider) -> AsyncIterator[OidcValidator]:
    async with OidcValidator(OidcSettings(issuer=oidc.issuer, audience=AUDIENCE)) as checker:
        yield checker


def device_log_in(
    provider: OidcProvider,
    settings: LoginSettings,
    user: str = "alice",
    *,
    deny: bool = False,
    delay: float = 0.0,
    prompts: list[DevicePrompt] | None = None,
    waits: list[float] | None = None,
) -> TokenSet:
    """The CLI's device login, with the person confirming on "another device" (a thread).

    ``delay`` keeps the person away for a while, so the CLI has to poll more than once.
    """
    failures: list[BaseException] = []
    people: list[threading.Thread] = []

    def person(prompt: DevicePrompt) -> None:
        time.sleep(delay)
        try:
            uri = prompt.verification_uri_complete or prompt.verification_uri
            provider.approve_device(uri, user, deny=deny)
        except BaseException as exc:
            failures.append(exc)

    def on_prompt(prompt: DevicePrompt) -> None:
        if prompts is not None:
            prompts.append(prompt)
        thread = threading.Thread(target=person, args=(prompt,), daemon=True)
        thread.start()
        people.append(thread)

    try:
        return device_login(
            settings, on_prompt=on_prompt, on_wait=waits.append if waits is not None else None
        )
    finally:
        for thread in people:
            thread.join(15)
        if failures:
            raise failures[0]


@pytest.fixture
def log_in(oidc: OidcProvider, settings: LoginSettings) -> LogIn:
    def run(user: str = "alice", **kwargs: Any) -> TokenSet:
        return device_log_in(oidc, settings, user, **kwargs)

    return run


@pytest.fixture(scope="session")
def alice(oidc: OidcProvider) -> TokenSet:
    """One device login as alice, shared by tests that only read her tokens."""
    return device_log_in(oidc, settings_for(oidc), "alice")


@pytest.fixture
def craft(oidc: OidcProvider) -> Craft:
    """A token with valid claims for Gatehouse, signed by one of the provider's own keys.

    Keyword arguments replace claims (None removes one); ``key`` and ``header`` override the
    signing key (a private JWK) and header fields.
    """

    def make(
        *,
        key: Mapping[str, Any] | None = None,
        header: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        jwk = dict(key or oidc.signing_key)
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": oidc.issuer,
            "aud": AUDIENCE,
            "sub": "alice",
            "email": "alice@example.com",
            "groups": ["dba"],
            "iat": now,
            "exp": now + 300,
            "client_id": CLIENT_ID,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        fields = {"alg": jwk["alg"], "kid": jwk["kid"], "typ": "at+jwt", **(header or {})}
        with warnings.catch_warnings():  # joserfc frowns on "EdDSA" (RFC 9864); issuers use it
            warnings.simplefilter("ignore", SecurityWarning)
            signer = JWKRegistry.import_key(jwk)
            return jwt.encode(fields, payload, signer, algorithms=[fields["alg"]])

    return make


def key_of(provider: OidcProvider, alg: str) -> dict[str, Any]:
    return next(k for k in provider.keys if k["alg"] == alg)

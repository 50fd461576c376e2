"""The control plane's check of people's tokens: what it accepts, and each reason it refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from cli.login import TokenSet
from controlplane.auth.oidc import OidcSettings, OidcValidator
from controlplane.errors import Unauthenticated
from devenv.oidc import (
    AUDIENCE,
    CLIENT_ID,
    OTHER_RESOURCE,
    OidcProvider,
    new_signing_key,
    public_jwk,
)
from tests.integration.oidc.conftest import Craft, device_log_in, key_of, settings_for


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.fixture(scope="module")
def elsewhere(oidc: OidcProvider) -> TokenSet:
    """A real login whose access token is for another resource server."""
    return device_log_in(oidc, settings_for(oidc, resource=OTHER_RESOURCE), "alice")


@dataclass
class Tokens:
    oidc: OidcProvider
    alice: TokenSet
    elsewhere: TokenSet
    craft: Craft


@pytest.fixture
def tokens(oidc: OidcProvider, alice: TokenSet, elsewhere: TokenSet, craft: Craft) -> Tokens:
    return Tokens(oidc, alice, elsewhere, craft)


# --- accepted -------------------------------------------------------------------------------


async def test_an_id_token_is_accepted_when_its_audience_is_configured(
    oidc: OidcProvider, alice: TokenSet
) -> None:
    assert alice.id_token is not None
    settings = OidcSettings(issuer=oidc.issuer, audience=(AUDIENCE, CLIENT_ID))
    async with OidcValidator(settings) as validator:
        claims = await validator.validate(alice.id_token)
        assert (claims.subject, claims.groups, claims.audience) == ("alice", ("dba",), (CLIENT_ID,))
        access = await validator.validate(alice.access_token)
        assert access.token_type == "at+jwt" and access.audience == (AUDIENCE,)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
async def test_tokens_signed_with_other_published_public_key_types_are_accepted(
    oidc: OidcProvider, craft: Craft, validator: OidcValidator, alg: str
) -> None:
    claims = await validator.validate(craft(key=key_of(oidc, alg), sub="carol", groups=["ops"]))
    assert (claims.subject, claims.groups) == ("carol", ("ops",))


async def test_a_groups_claim_can_be_a_dotted_path(oidc: OidcProvider, craft: Craft) -> None:
    settings = OidcSettings(oidc.issuer, AUDIENCE, groups_claim="realm_access.roles")
    async with OidcValidator(settings) as validator:
        claims = await validator.validate(craft(realm_access={"roles": ["dba", "ops"]}))
    assert claims.groups == ("dba", "ops")


@pytest.mark.parametrize("verified", [False, "false", 0, "no"])
async def test_an_email_the_provider_says_is_unverified_is_not_taken(
    craft: Craft, validator: OidcValidator, verified: object
) -> None:
    """Providers with self-service sign-up let a person set any address and mark it
    unverified: taken, the trail and reviewers would see someone else's address."""
    claims = await validator.validate(craft(email="ceo@example.com", email_verified=verified))
    assert claims.subject == "alice" and claims.email is None
    kept = await validator.validate(craft(email="alice@example.com", email_verified=True))
    assert kept.email == "alice@example.com"


async def test_clock_skew_within_the_leeway_is_tolerated(
    craft: Craft, validator: OidcValidator
) -> None:
    now = int(time.time())
    await validator.validate(craft(exp=now - 10, nbf=now + 10, iat=now + 10))


# --- refused --------------------------------------------------------------------------------


def flipped_signature(t: Tokens) -> str:
    header, payload, signature = t.alice.access_token.split(".")
    raw = bytearray(_unb64(signature))
    raw[17] ^= 0x04
    return f"{header}.{payload}.{_b64(bytes(raw))}"


def escalated_groups(t: Tokens) -> str:
    header, payload, signature = t.alice.access_token.split(".")
    claims = json.loads(_unb64(payload))
    claims["groups"] = ["admins"]
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def another_key_with_the_same_kid(t: Tokens) -> str:
    return t.craft(key=new_signing_key("RS256", kid=t.oidc.signing_key["kid"]))


def alg_none(t: Tokens) -> str:
    _, payload, _ = t.craft().split(".")
    return _b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode()) + f".{payload}."


def hmac_with_the_public_key(t: Tokens) -> str:
    """The classic confusion: HS256 keyed with what the issuer publishes (its public key)."""
    _, payload, _ = t.craft().split(".")
    key = t.oidc.signing_key
    header = _b64(json.dumps({"alg": "HS256", "kid": key["kid"], "typ": "at+jwt"}).encode())
    secret = json.dumps(public_jwk(key)).encode()
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(mac)}"


def expired(t: Tokens) -> str:
    now = int(time.time())
    return t.craft(iat=now - 600, exp=now - 120)


def not_yet_valid(t: Tokens) -> str:
    return t.craft(nbf=int(time.time()) + 600)


def issued_in_the_future(t: Tokens) -> str:
    return t.craft(iat=int(time.time()) + 600)


def for_another_service(t: Tokens) -> str:
    return t.elsewhere.access_token


def id_token_for_the_cli(t: Tokens) -> str:
    assert t.alice.id_token is not None
    return t.alice.id_token


def from_another_issuer(t: Tokens) -> str:
    return t.craft(iss="https://login.evil.example")


def unknown_kid(t: Tokens) -> str:
    return t.craft(key=new_signing_key("RS256", kid="not-a-published-key"))


def rs256_naming_the_ec_key(t: Tokens) -> str:
    _, payload, signature = t.craft().split(".")
    kid = key_of(t.oidc, "ES256")["kid"]
    header = _b64(json.dumps({"alg": "RS256", "kid": kid, "typ": "at+jwt"}).encode())
    return f"{header}.{payload}.{signature}"


def without_expiry(t: Tokens) -> str:
    return t.craft(exp=None)


def absurd_expiry(t: Tokens) -> str:
    return t.craft(exp=10**20)


def a_logout_token(t: Tokens) -> str:
    return t.craft(header={"typ": "logout+jwt"})


REFUSALS: dict[str, tuple[Callable[[Tokens], str], str]] = {
    "forged signature": (flipped_signature, "the signature does not verify"),
    "altered claims": (escalated_groups, "the signature does not verify"),
    "other key, same kid": (another_key_with_the_same_kid, "the signature does not verify"),
    "alg none": (alg_none, "alg none is not allowed"),
    "HS256 with the public key": (hmac_with_the_public_key, "alg 'HS256' (HMAC) is not allowed"),
    "expired": (expired, "the token expired at "),
    "not yet valid": (not_yet_valid, "the token is not valid before "),
    "issued in the future": (issued_in_the_future, "the token was issued in the future"),
    "wrong audience": (for_another_service, "the token is for audience 'other-service', not"),
    "ID token, access audience": (id_token_for_the_cli, "is for audience 'gatehouse-cli'"),
    "wrong issuer": (from_another_issuer, "issued by 'https://login.evil.example', not 'http"),
    "unknown kid": (
        unknown_kid,
        "unknown signing key 'not-a-published-key' (after re-fetching the issuer's keys",
    ),
    "alg/key mismatch": (rs256_naming_the_ec_key, "is not for RS256"),
    "no expiry": (without_expiry, "the token has no expiry (exp)"),
    "absurd expiry": (absurd_expiry, "the token's exp claim is not a plausible time"),
    "not an access token": (a_logout_token, "of type 'logout+jwt' is not an access token"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_tokens_name_the_reason_and_never_echo_the_token(
    case: str, tokens: Tokens, validator: OidcValidator
) -> None:
    make, reason = REFUSALS[case]
    token = make(tokens)
    with pytest.raises(Unauthenticated) as refused:
        await validator.validate(token)
    message = str(refused.value)
    assert reason in message
    assert token not in message
    for segment in token.split("."):
        assert len(segment) < 8 or segment not in message


async def test_garbage_is_refused_without_fetching_keys(oidc: OidcProvider) -> None:
    async with OidcValidator(OidcSettings(oidc.issuer, AUDIENCE)) as validator:
        for junk, reason in [
            ("ghu_notajwt", "not a JWT"),
            ("a.b.c.d.e", "encrypted tokens (JWE) are not supported"),
            ("!!.??.**", "not a well-formed JWT"),
            ("e30." + _b64(b"[" * 5000 + b"]" * 5000) + ".c2ln", "not a well-formed JWT"),
            ("x" * 20_000, "larger than"),
        ]:
            with pytest.raises(Unauthenticated, match=re.escape(reason)):
                await validator.validate(junk)
        assert validator.jwks_fetches == 0


def test_settings_refuse_unsafe_choices() -> None:
    issuer = "https://idp.example"
    with pytest.raises(ValueError, match="HS256 cannot be allowed"):
        OidcSettings(issuer, AUDIENCE, allowed_algs=("RS256", "HS256"))
    with pytest.raises(ValueError, match="leeway must be 0 to 60"):
        OidcSettings(issuer, AUDIENCE, leeway=300)
    with pytest.raises(ValueError, match="https"):
        OidcSettings("http://idp.example", AUDIENCE)
    with pytest.raises(ValueError, match="at most every 30"):
        OidcSettings(issuer, AUDIENCE, refetch_interval=1)


def test_settings_from_the_environment() -> None:
    assert OidcSettings.from_env({}) is None
    settings = OidcSettings.from_env(
        {
            "GATEHOUSE_OIDC_ISSUER": "https://idp.example",
            "GATEHOUSE_OIDC_AUDIENCE": "gatehouse, gatehouse-cli",
            "GATEHOUSE_OIDC_GROUPS_CLAIM": "roles",
        }
    )
    assert settings is not None
    assert settings.audiences == ("gatehouse", "gatehouse-cli")
    assert settings.groups_claim == "roles"

"""People's bearer tokens from an OpenID Provider: JWTs checked against the issuer's keys.

The control plane accepts RFC 9068 access tokens (``typ: at+jwt``) and ID tokens alike, as long
as their ``aud`` names Gatehouse: the audience, not the token type, says whom a token is for.

Order of checks: everything that can refuse a token without keys comes first (size, header,
algorithm allow-list, ``iss``, ``aud``, ``exp``, ``nbf``, ``iat``), so junk and tokens of other
issuers never cause a key fetch, and the message names the real problem. Only then is the key
looked up and the signature verified; a claim is trusted only once that succeeds.

Keys: the issuer's JWKS, found through discovery, cached for Cache-Control's max-age (10 min
without one). A token naming an unknown ``kid`` re-fetches the set at most once per 30 s, so
forged kids cannot turn the control plane into a fetch cannon; concurrent requests share one
fetch. When a fetch fails the keys already known stay in use (an issuer outage does not log
everyone out); a key the issuer stops publishing is dropped at the next successful fetch,
because withdrawing a key is how an issuer revokes it.

Messages name the reason ("the token expired at …") and never contain the token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry

from controlplane.auth.identity import Identity
from controlplane.errors import Unauthenticated, Unavailable
from wire.addresses import is_loopback_host

__all__ = ["DEFAULT_ALGS", "Claims", "IssuerKeys", "OidcSettings", "OidcValidator"]

log = logging.getLogger(__name__)

#: Public-key algorithms only: HMAC would let anyone holding the issuer's public key material
#: mint tokens, and `none` is no signature at all.
DEFAULT_ALGS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
)  # fmt: skip
MAX_LEEWAY = 60
#: An unknown kid re-fetches the issuer's keys at most this often (seconds).
REFETCH_INTERVAL = 30.0
#: While no key has ever been fetched, a failed first fetch is retried at most this often.
FIRST_FETCH_RETRY = 5.0
DEFAULT_JWKS_TTL = 600.0
MIN_JWKS_TTL = 60.0
MAX_JWKS_TTL = 86400.0
MAX_TOKEN_BYTES = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
_TOKEN_TYPES = {"jwt", "at+jwt", "application/jwt", "application/at+jwt"}
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_LAST_TIME = 253402300800  # 10000-01-01: later "times" are junk


def _require_https(url: str, what: str) -> None:
    """Keys fetched in plaintext could be swapped by anyone on the path: loopback only."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (
        parts.scheme == "http" and is_loopback_host(parts.hostname or "")
    ):
        return
    raise ValueError(f"{what} {url!r} must be an https:// URL (http is allowed on loopback only)")


@dataclass(frozen=True)
class OidcSettings:
    """Which issuer the control plane trusts, for which audience; validated when built."""

    issuer: str
    audience: str | tuple[str, ...]
    groups_claim: str = "groups"
    allowed_algs: tuple[str, ...] = DEFAULT_ALGS
    leeway: int = 30
    #: Skip discovery and fetch keys from here (issuers without a discovery document).
    jwks_uri: str | None = None
    http_timeout: float = 5.0
    refetch_interval: float = REFETCH_INTERVAL

    def __post_init__(self) -> None:
        _require_https(self.issuer, "the OIDC issuer")
        if self.jwks_uri is not None:
            _require_https(self.jwks_uri, "the JWKS URI")
        if not self.audiences or not all(self.audiences):
            raise ValueError("the OIDC audience must name who the tokens are for, e.g. gatehouse")
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ValueError(f"the clock leeway must be 0 to {MAX_LEEWAY} s, not {self.leeway}")
        if self.refetch_interval < REFETCH_INTERVAL:
            raise ValueError(f"keys may be re-fetched at most every {REFETCH_INTERVAL:g} s")
        unsafe = [a for a in self.allowed_algs if a == "none" or a.upper().startswith("HS")]
        if unsafe:
            raise ValueError(f"{', '.join(unsafe)} cannot be allowed: only public-key algorithms")
        unknown = [a for a in self.allowed_algs if a not in JWSRegistry.algorithms]
        if unknown or not self.allowed_algs:
            raise ValueError(f"unknown signature algorithms {unknown}; choose from {DEFAULT_ALGS}")

    @property
    def audiences(self) -> tuple[str, ...]:
        return (self.audience,) if isinstance(self.audience, str) else tuple(self.audience)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OidcSettings | None:
        """From GATEHOUSE_OIDC_ISSUER, _AUDIENCE (comma-separated), _GROUPS_CLAIM and _LEEWAY
        (seconds of clock skew allowed, 0 to 60, default 30; a session of a login ends that
        long after the token's exp).

        None when no issuer is configured: the control plane then accepts only its own tokens.
        """
        issuer = env.get("GATEHOUSE_OIDC_ISSUER", "").strip()
        if not issuer:
            return None
        audience = tuple(a.strip() for a in env.get("GATEHOUSE_OIDC_AUDIENCE", "").split(","))
        leeway = env.get("GATEHOUSE_OIDC_LEEWAY", "").strip() or "30"
        if not leeway.isdigit():
            raise ValueError(f"GATEHOUSE_OIDC_LEEWAY must be whole seconds, not {leeway!r}")
        return cls(
            issuer=issuer,
            audience=tuple(a for a in audience if a),
            groups_claim=env.get("GATEHOUSE_OIDC_GROUPS_CLAIM", "").strip() or "groups",
            leeway=int(leeway),
        )


@dataclass(frozen=True)
class Claims:
    """What a verified token says about the person, ready to become an Identity."""

    subject: str
    email: str | None
    groups: tuple[str, ...]
    expires_at: datetime
    issuer: str
    audience: tuple[str, ...]
    token_type: str  # the header's typ: at+jwt for RFC 9068 access tokens
    client_id: str | None
    raw: Mapping[str, Any] = field(repr=False)

    def identity(self) -> Identity:
        return Identity(subject=self.subject, email=self.email, groups=self.groups)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ago(seconds: float) -> str:
    seconds = abs(int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _shown(value: object, limit: int = 80) -> str:
    """A value from the token, quoted and bounded: it is attacker-controlled text."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _b64decode(segment: str) -> bytes:
    if not _B64URL.match(segment):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated(f"the token's {name} claim is not a number")
    if not 0 <= value < _LAST_TIME:  # also keeps datetime arithmetic from overflowing
        raise Unauthenticated(f"the token's {name} claim is not a plausible time")
    return float(value)


def _claim_path(claims: Mapping[str, Any], name: str) -> Any:
    """``name`` as a claim, else as a dotted path (``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class _FetchError(Exception):
    pass


class IssuerKeys:
    """The issuer's published signing keys: discovered, cached, re-fetched with restraint."""

    def __init__(
        self,
        settings: OidcSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._jwks_uri = settings.jwks_uri
        self._keys: list[Key] | None = None
        self._fresh_until = 0.0
        self._last_attempt: float | None = None
        self._unavailable = ""  # why the first fetch failed, while no key is known
        self._fetches = 0

    @property
    def fetches(self) -> int:
        return self._fetches

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    async def key_for(self, kid: str | None, alg: str) -> Key:
        """The key to verify a token with ``kid`` and ``alg``; Unauthenticated if none."""
        await self._ensure_fresh()
        key = self._find(kid, alg)
        if key is not None:
            return key
        async with self._lock:
            key = self._find(kid, alg)  # another request may have fetched it meanwhile
            if key is None and self._may_fetch():
                await self._fetch()
                key = self._find(kid, alg)
            if key is not None:
                return key
            since = self._monotonic() - (self._last_attempt or 0.0)
        when = (
            "just now"
            if since < 1
            else f"{_ago(since)} ago; they are re-fetched at most every "
            f"{self.settings.refetch_interval:g} s"
        )
        if kid is None:
            raise Unauthenticated(
                f"the token names no signing key (kid) and the issuer's keys offer no single "
                f"{alg} key (after re-fetching the issuer's keys {when})"
            )
        raise Unauthenticated(
            f"unknown signing key {_shown(kid)} (after re-fetching the issuer's keys {when})"
        )

    def _find(self, kid: str | None, alg: str) -> Key | None:
        """The published key for ``kid`` that can verify ``alg``; refuses a mismatched one."""
        keys = self._keys or []
        named = [k for k in keys if k.kid == kid] if kid is not None else list(keys)
        model = JWSRegistry.algorithms[alg]
        fitting = []
        for key in named:
            if key.key_type != model.key_type or key.get("alg") not in (None, alg):
                continue
            try:
                model.check_key(key)
            except (JoseError, ValueError):
                continue
            fitting.append(key)
        if kid is not None and named and not fitting:
            raise Unauthenticated(
                f"the issuer's key {_shown(kid)} is not for {alg}: the token's algorithm does "
                "not match the key it names"
            )
        if len(fitting) == 1 or (kid is not None and fitting):
            return fitting[0]
        return None

    def _may_retry_first(self) -> bool:
        """Before any key is known every request fails anyway: retry, but not for each one."""
        last = self._last_attempt
        return last is None or self._monotonic() - last >= FIRST_FETCH_RETRY

    def _may_fetch(self) -> bool:
        last = self._last_attempt
        return last is None or self._monotonic() - last >= self.settings.refetch_interval

    async def _ensure_fresh(self) -> None:
        """Load the keys the first time, and again when the cached set's max-age has passed."""
        if self._keys is not None and self._monotonic() < self._fresh_until:
            return
        async with self._lock:
            if self._keys is not None and self._monotonic() < self._fresh_until:
                return
            if self._keys is not None and not self._may_fetch():
                return  # stale keys keep working while a failing issuer is retried every 30 s
            if self._keys is None and self._unavailable and not self._may_retry_first():
                raise Unavailable(self._unavailable)
            await self._fetch()

    async def _fetch(self) -> None:
        """One attempt to (re)load the key set; call with the lock held."""
        started = self._monotonic()
        self._last_attempt = started
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            self._fetches += 1
            document, max_age = await self._get_json(self._jwks_uri)
            keys = self._import_keys(document)
        except _FetchError as exc:
            if self._keys is None:
                self._unavailable = (
                    f"cannot fetch the signing keys of {self.settings.issuer}: {exc}; tokens "
                    "cannot be checked until the identity provider answers"
                )
                raise Unavailable(self._unavailable) from None
            log.warning("keeping the known OIDC signing keys: re-fetching them failed: %s", exc)
            return
        ttl = DEFAULT_JWKS_TTL if max_age is None else max(MIN_JWKS_TTL, min(max_age, MAX_JWKS_TTL))
        self._keys = keys
        self._fresh_until = started + ttl
        log.info(
            "fetched %d OIDC signing keys from %s (kids %s), cached for %g s",
            len(keys),
            self._jwks_uri,
            ", ".join(str(k.kid) for k in keys),
            ttl,
        )

    async def _discover(self) -> str:
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document, _ = await self._get_json(url)
        if document.get("issuer") != self.settings.issuer:
            raise _FetchError(
                f"the discovery document at {url} names issuer {_shown(document.get('issuer'))}, "
                f"not {self.settings.issuer!r} (GATEHOUSE_OIDC_ISSUER must match it exactly)"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise _FetchError(f"the discovery document at {url} has no jwks_uri")
        try:
            _require_https(jwks_uri, "the issuer's jwks_uri")
        except ValueError as exc:
            raise _FetchError(str(exc)) from None
        return jwks_uri

    async def _get_json(self, url: str) -> tuple[dict[str, Any], float | None]:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.http_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            async with self._session.get(url, headers={"accept": "application/json"}) as response:
                if response.status != 200:
                    raise _FetchError(f"{url} answered HTTP {response.status}")
                cache_control = response.headers.get("cache-control", "")
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > MAX_DOCUMENT_BYTES:
                        raise _FetchError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _FetchError(f"{url}: {exc or type(exc).__name__}") from None
        body = b"".join(chunks)
        try:
            document = json.loads(body)
        except ValueError:
            raise _FetchError(f"{url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise _FetchError(f"{url} did not answer a JSON object")
        match = re.search(r"max-age\s*=\s*(\d+)", cache_control)
        return document, float(match.group(1)) if match else None

    def _import_keys(self, document: Mapping[str, Any]) -> list[Key]:
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise _FetchError(f"{self._jwks_uri} is not a JWK set (no keys list)")
        keys: list[Key] = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = JWKRegistry.import_key(entry)
            except (JoseError, ValueError, TypeError) as exc:
                log.warning("ignoring a key the issuer publishes (%s): %s", entry.get("kid"), exc)
                continue
            if key.is_private:
                log.warning("the issuer publishes a private key (%s); ignoring it", key.kid)
                continue
            keys.append(key)
        if not keys:
            raise _FetchError(f"{self._jwks_uri} publishes no usable signing keys")
        return keys


class OidcValidator:
    """Checks bearer JWTs for one issuer and audience; share one per process.

    ``clock`` (wall time, for exp/nbf) and ``monotonic`` (cache ages) are injectable so tests
    can move time without waiting.
    """

    def __init__(
        self,
        settings: OidcSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.keys = IssuerKeys(settings, session=session, monotonic=monotonic)

    @property
    def jwks_fetches(self) -> int:
        """How many times the issuer's keys were requested (for metrics and tests)."""
        return self.keys.fetches

    async def __aenter__(self) -> OidcValidator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.keys.close()

    async def validate(self, token: str) -> Claims:
        """The verified claims of ``token``, or Unauthenticated naming why it is refused.

        Raises Unavailable when the issuer's keys have never been fetched and cannot be.
        """
        header, claims, signing_input, signature = self._parse(token)
        alg = self._check_header(header)
        self._check_claims(claims)
        key = await self.keys.key_for(header.get("kid"), alg)
        model = JWSRegistry.algorithms[alg]
        try:
            model.check_key(key)
            verified = model.verify(signing_input, signature, key)
        except (JoseError, ValueError, TypeError) as exc:
            raise Unauthenticated(
                f"the issuer's key {_shown(key.kid)} cannot verify {alg} signatures ({exc})"
            ) from None
        if not verified:
            raise Unauthenticated("the signature does not verify: the token was altered or forged")
        return self._claims(header, claims)

    # --- parsing and checks that need no keys --------------------------------------------

    def _parse(self, token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"the token is larger than {MAX_TOKEN_BYTES} bytes")
        parts = token.split(".")
        if len(parts) == 5:
            raise Unauthenticated("encrypted tokens (JWE) are not supported: send a signed JWT")
        if len(parts) != 3:
            raise Unauthenticated(
                "the bearer token is not a JWT: Gatehouse needs JWT access tokens or ID tokens "
                "from the identity provider, or a Gatehouse token"
            )
        try:
            header = json.loads(_b64decode(parts[0]))
            claims = json.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except (ValueError, RecursionError):
            raise Unauthenticated("the token is not a well-formed JWT") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise Unauthenticated("the token is not a well-formed JWT")
        return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature

    def _check_header(self, header: Mapping[str, Any]) -> str:
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Unauthenticated("the token names no signature algorithm (alg)")
        if alg.lower() == "none":
            raise Unauthenticated("alg none is not allowed: the token is not signed")
        allowed = ", ".join(self.settings.allowed_algs)
        if alg.upper().startswith("HS"):
            raise Unauthenticated(
                f"alg {_shown(alg)} (HMAC) is not allowed: tokens must be signed with the "
                f"issuer's private key ({allowed})"
            )
        if alg not in self.settings.allowed_algs:
            raise Unauthenticated(f"alg {_shown(alg)} is not allowed; allowed: {allowed}")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TOKEN_TYPES):
            raise Unauthenticated(
                f"a token of type {_shown(typ)} is not an access token or ID token"
            )
        if "crit" in header or "b64" in header:
            raise Unauthenticated("the token uses JWS extensions (crit, b64) Gatehouse refuses")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's key id (kid) is not a string")
        return alg

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        settings = self.settings
        iss = claims.get("iss")
        if iss != settings.issuer:
            if iss is None:
                raise Unauthenticated("the token names no issuer (iss)")
            raise Unauthenticated(f"the token was issued by {_shown(iss)}, not {settings.issuer!r}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(a in settings.audiences for a in audiences if isinstance(a, str)):
            wanted = " or ".join(repr(a) for a in settings.audiences)
            if not audiences:
                raise Unauthenticated(f"the token names no audience (aud); it must be {wanted}")
            shown = ", ".join(_shown(a, 60) for a in audiences[:5])
            raise Unauthenticated(f"the token is for audience {shown}, not {wanted}")
        now, leeway = self._clock(), settings.leeway
        exp = _number(claims, "exp")
        if exp is None:
            raise Unauthenticated(
                "the token has no expiry (exp); only expiring tokens are accepted"
            )
        if now > exp + leeway:
            raise Unauthenticated(f"the token expired at {_when(exp)} ({_ago(now - exp)} ago)")
        nbf = _number(claims, "nbf")
        if nbf is not None and now + leeway < nbf:
            raise Unauthenticated(
                f"the token is not valid before {_when(nbf)} (in {_ago(nbf - now)}); "
                "check the clocks of the identity provider and the control plane"
            )
        iat = _number(claims, "iat")
        if iat is not None and now + leeway < iat:
            raise Unauthenticated(
                f"the token was issued in the future ({_when(iat)}); check the clocks of the "
                "identity provider and the control plane"
            )
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("the token names no subject (sub)")

    def _claims(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> Claims:
        name = self.settings.groups_claim
        value = _claim_path(claims, name)
        if value is None:
            groups: tuple[str, ...] = ()
        elif isinstance(value, str):
            groups = (value,)
        elif isinstance(value, list) and all(isinstance(g, str) for g in value):
            groups = tuple(value)
        else:
            raise Unauthenticated(
                f"the groups claim {name!r} is not a list of names; check "
                "GATEHOUSE_OIDC_GROUPS_CLAIM (a claim name, or a dotted path into one)"
            )
        email = claims.get("email")
        # A provider with self-service sign-up lets a person set any address and says it is
        # unverified: taken, events and reviewers would name someone else. Absent: trusted.
        verified = claims.get("email_verified", True)
        if verified is not True and verified != "true":
            email = None
        aud = claims["aud"]
        client_id = claims.get("client_id", claims.get("azp"))
        return Claims(
            subject=claims["sub"],
            email=email if isinstance(email, str) else None,
            groups=groups,
            expires_at=datetime.fromtimestamp(float(claims["exp"]), UTC),
            issuer=claims["iss"],
            audience=(aud,) if isinstance(aud, str) else tuple(aud),
            token_type=str(header.get("typ") or "JWT"),
            client_id=client_id if isinstance(client_id, str) else None,
            raw=dict(claims),
        )

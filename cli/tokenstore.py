"""A person's OIDC login on disk, and a valid access token from it for each command.

One file per profile (``tokens.json`` for the ``default`` profile), 0600, replaced atomically.
Tokens are refreshed when less than a minute remains; refreshing holds a file lock, because
identity providers rotate refresh tokens and treat a reused one as theft, so two commands
refreshing at once would otherwise revoke the login.

Standard library only: ``gatehouse exec`` asks ``TokenStore().current()`` before its event loop
starts, on every run, and pays for the OAuth client (Authlib) only when it must refresh.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cli import profiles
from cli.errors import USAGE, CliError
from wire.addresses import is_loopback_host

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_SCOPE",
    "DEFAULT_SCOPES",
    "REFRESH_MARGIN",
    "LoginSettings",
    "TokenSet",
    "TokenStore",
    "default_token_path",
    "unverified_claims",
    "when",
]

DEFAULT_CLIENT_ID = "gatehouse-cli"
DEFAULT_SCOPES = ("openid", "profile", "email", "offline_access")
DEFAULT_SCOPE = " ".join(DEFAULT_SCOPES)
#: Refresh when less than this many seconds of the access token remain.
REFRESH_MARGIN = 60.0


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
    #: The RFC 8707 resource the login asked for, asked for again on each refresh.
    resource: str | None = None

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def claims(self) -> dict[str, Any]:
        """Who the tokens say the person is: the JWT access token, else the ID token.

        Not verified here (the control plane verifies every token it is shown); for display.
        """
        for token in (self.access_token, self.id_token):
            claims = unverified_claims(token) if token else None
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
        token_endpoint: str,
        revocation_endpoint: str | None,
        resource: str | None = None,
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
            token_endpoint=token_endpoint,
            # Providers may keep the refresh token (no rotation) and skip a new ID token.
            refresh_token=refresh
            if isinstance(refresh, str)
            else (previous.refresh_token if previous else None),
            id_token=id_token
            if isinstance(id_token, str)
            else (previous.id_token if previous else None),
            scope=str(response.get("scope") or (previous.scope if previous else "")),
            revocation_endpoint=revocation_endpoint,
            resource=resource,
        )


def unverified_claims(token: str) -> dict[str, Any] | None:
    """A JWT's payload, unchecked: for display and the nonce comparison only."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def default_token_path() -> Path:
    """The login of this command's profile (see cli.profiles)."""
    return profiles.token_path(profiles.selected().profile)


class TokenStore:
    """The person's login on disk: one file per profile, 0600, replaced atomically."""

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
        profiles.write_private(self.path, json.dumps(asdict(tokens), indent=2))

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
                    f"your login expired at {when(tokens.expires_at)}: run `gatehouse login`"
                )
            from cli.oidcflow import refresh

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

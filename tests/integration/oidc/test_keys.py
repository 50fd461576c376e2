"""The issuer's keys: rotation, re-fetching with restraint, Cache-Control, outages.

Time is a fake monotonic clock handed to the validator, so "30 s later" costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.auth.oidc import OidcSettings, OidcValidator
from controlplane.errors import Unauthenticated, Unavailable
from devenv.oidc import AUDIENCE, OidcProvider, new_signing_key, start_oidc_provider
from tests.integration.oidc.conftest import Craft, device_log_in, settings_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def rotating(tmp_path: Path, node_modules: None) -> Iterator[OidcProvider]:
    """A provider of the test's own, to restart with other keys; its JWKS says max-age=120."""
    provider = start_oidc_provider(
        tmp_path / "oidc", keys=[new_signing_key("RS256", kid="k1")], jwks_max_age=120
    )
    yield provider
    provider.stop()


def _validator(provider: OidcProvider, clock: Clock) -> OidcValidator:
    return OidcValidator(OidcSettings(provider.issuer, AUDIENCE), monotonic=clock)


async def test_key_rotation_new_key_after_one_refetch_old_key_while_published(
    rotating: OidcProvider,
) -> None:
    clock = Clock()
    settings = settings_for(rotating)
    async with _validator(rotating, clock) as validator:
        old = device_log_in(rotating, settings, "alice").access_token
        assert (await validator.validate(old)).subject == "alice"
        assert validator.jwks_fetches == 1

        # The issuer rotates: k2 signs from now on, k1 stays published for tokens in flight.
        k1 = rotating.signing_key
        rotating.restart_with_keys([new_signing_key("RS256", kid="k2"), k1])
        new = device_log_in(rotating, settings, "bob").access_token

        # Within 30 s of the last fetch even a real new kid waits: that is the price of
        # refusing fetch storms.
        with pytest.raises(Unauthenticated, match=r"unknown signing key 'k2' \(after re-fetch"):
            await validator.validate(new)
        assert validator.jwks_fetches == 1

        clock.advance(31)
        assert (await validator.validate(new)).subject == "bob"
        assert validator.jwks_fetches == 2
        assert (await validator.validate(old)).subject == "alice"  # k1 is still published
        assert validator.jwks_fetches == 2

        # The issuer withdraws k1; once the cached set is stale, k1's tokens are refused.
        rotating.restart_with_keys([rotating.signing_key])
        clock.advance(121)
        with pytest.raises(Unauthenticated, match="unknown signing key 'k1'"):
            await validator.validate(old)
        assert (await validator.validate(new)).subject == "bob"
        assert validator.jwks_fetches == 3


async def test_forged_kids_cause_at_most_one_fetch_per_30_s(
    oidc: OidcProvider, craft: Craft
) -> None:
    clock = Clock()

    def forged(n: int) -> str:
        return craft(key=new_signing_key("ES256", kid=f"forged-{n}"))

    storm = [forged(n) for n in range(40)]
    async with _validator(oidc, clock) as validator:

        async def refuse_all() -> None:
            results = await asyncio.gather(
                *(validator.validate(t) for t in storm), return_exceptions=True
            )
            assert all(isinstance(r, Unauthenticated) for r in results), results

        await validator.validate(craft())
        assert validator.jwks_fetches == 1
        await refuse_all()
        assert validator.jwks_fetches == 1  # fetched just now: no re-fetch

        clock.advance(30)
        await refuse_all()  # 40 concurrent unknown kids share one re-fetch
        assert validator.jwks_fetches == 2
        clock.advance(29)
        await refuse_all()
        assert validator.jwks_fetches == 2
        clock.advance(1)
        await refuse_all()
        assert validator.jwks_fetches == 3

        clock.advance(5)
        with pytest.raises(Unauthenticated) as refused:
            await validator.validate(storm[0])
        assert str(refused.value) == (
            "unknown signing key 'forged-0' (after re-fetching the issuer's keys 5 s ago; "
            "they are re-fetched at most every 30 s)"
        )


async def test_cache_control_max_age_sets_how_long_keys_are_cached(
    rotating: OidcProvider, craft: Craft
) -> None:
    clock = Clock()
    token = craft(key=rotating.signing_key, iss=rotating.issuer)
    async with _validator(rotating, clock) as validator:
        await validator.validate(token)
        clock.advance(119)
        await validator.validate(token)
        assert validator.jwks_fetches == 1
        clock.advance(2)
        await validator.validate(token)
        assert validator.jwks_fetches == 2


async def test_known_keys_keep_working_while_the_issuer_is_down(
    rotating: OidcProvider, craft: Craft, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    token = craft(key=rotating.signing_key, iss=rotating.issuer)
    async with _validator(rotating, clock) as validator:
        await validator.validate(token)
        rotating.stop()
        clock.advance(600)
        with caplog.at_level(logging.WARNING, logger="controlplane.auth.oidc"):
            assert (await validator.validate(token)).subject == "alice"
        assert "keeping the known OIDC signing keys" in caplog.text
        assert validator.jwks_fetches == 2
        clock.advance(10)
        await validator.validate(token)
        assert validator.jwks_fetches == 2  # a failing issuer is retried every 30 s, no more


async def test_an_unreachable_issuer_is_unavailable_not_unauthenticated(craft: Craft) -> None:
    settings = OidcSettings("http://127.0.0.1:9", AUDIENCE, http_timeout=2)
    async with OidcValidator(settings) as validator:
        with pytest.raises(
            Unavailable, match=r"cannot fetch the signing keys of http://127\.0\.0\.1:9"
        ):
            await validator.validate(craft(iss="http://127.0.0.1:9"))

"""Value detectors: realistic findings, the near misses they must leave alone, and safe shapes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redact.detectors import (
    DETECTORS,
    DetectorSet,
    UnknownDetector,
    credit_card,
    email,
    is_card_number,
    national_id,
    phone,
    secret,
)

# --- e-mail -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("john.doe@example.com", "***@example.com"),
        (
            "Contact: Jane <jane_smith+news@mail.example.co.uk>.",
            "Contact: Jane <***@mail.example.co.uk>.",
        ),
        ("a@b.io, c.d@e-f.org", "***@b.io, ***@e-f.org"),
        ("josé.garcía@correo.es", "***@correo.es"),
        ('{"email": "x@y.dev"}', '{"email": "***@y.dev"}'),
    ],
)
def test_email_masks_the_local_part_and_keeps_the_domain(text: str, masked: str) -> None:
    assert email(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "no address here",
        "@mention",
        "foo@bar",
        "a@b.c",
        "icon@2x.png",
        "lodash@4.17.21",
        "x@-y.com",
    ],
)
def test_email_leaves_near_misses_alone(text: str) -> None:
    assert email(text) is None


# --- card numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("4111111111111111", "**** **** **** 1111"),
        ("Visa 4111 1111 1111 1111 exp 12/29", "Visa **** **** **** 1111 exp 12/29"),
        ("4111-1111-1111-1111", "**** **** **** 1111"),
        ("amex 378282246310005", "amex **** **** **** 0005"),
        ("3782 822463 10005", "**** **** **** 0005"),
        ("mc=5555555555554444;", "mc=**** **** **** 4444;"),
        ("2223003122003222", "**** **** **** 3222"),  # Mastercard 2-series
        ("6011111111111117", "**** **** **** 1117"),  # Discover
        ("4111 1111 1111 1111 2024", "**** **** **** 1111 2024"),
    ],
)
def test_card_numbers_that_pass_luhn_keep_their_last_four(text: str, masked: str) -> None:
    assert credit_card(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # Luhn fails
        "4111 1111 1111 1112",
        "1234567890123452",  # Luhn-valid, but no card starts with 1
        "order 9111111111111111",
        "4444444444444444",  # one digit repeated
        "411111111111",  # 12 digits
        "41111111111111111111",  # 20 digits
        "4111111111111111.50",  # an amount
        "2024-01-15 10:30:00",
        "4111-1111 1111-1111",  # mixed separators
        "41-11-11-11-11-11-11-11",  # not grouped like a card
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca4111111111111111",  # a hash
        "ORD-4111111111111111",  # part of a dashed identifier
    ],
)
def test_card_near_misses_are_left_alone(text: str) -> None:
    assert credit_card(text) is None


def test_is_card_number() -> None:
    assert is_card_number("4111111111111111")
    assert not is_card_number("4111111111111112")
    assert not is_card_number("411111111111")
    assert not is_card_number("4111-1111-1111-1111")


# --- phone numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+14155552671", "***-***-**71"),
        ("call +44 20 7946 0958 now", "call ***-***-**58 now"),
        ("+1 (415) 555-2671", "***-***-**71"),
        ("+49 30 12345678", "***-***-**78"),
        ("(415) 555-2671", "***-***-**71"),
        ("415-555-2671", "***-***-**71"),
        ("415.555.2671", "***-***-**71"),
        ("1-800-555-0199", "***-***-**99"),
        ("020 7946 0958", "***-***-**58"),
        ("06-12345678", "***-***-**78"),
        ("01 23 45 67 89", "***-***-**89"),
        ("tel: (030) 1234567", "tel: ***-***-**67"),
    ],
)
def test_phone_numbers_keep_their_last_two_digits(text: str, masked: str) -> None:
    assert phone(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "4155552671",  # a bare number: an order id as often as a phone number
        "order 20240115",
        "2024-01-15",
        "15.01.2024",
        "01/02/2024 10:30",
        "01-02-2024 1030",
        "10:30:00+01:00",
        "192.168.100.200",
        "10.0.0.1",
        "v1.2.3",
        "ISBN 978-3-16-148410-0",
        "4111 1111 1111 1111",
        "12345-6789",
        "+12",
        "room 12, floor 3",
    ],
)
def test_phone_near_misses_are_left_alone(text: str) -> None:
    assert phone(text) is None


# --- national identifiers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("ssn 123-45-6789", "ssn ***-**-****"),
        ("SSN: 078 05 1120.", "SSN: ***-**-****."),
        ("AB123456C", "*********"),
        ("NI: AB 12 34 56 C", "NI: *************"),
        ("DNI 12345678Z", "DNI *********"),
        ("X1234567L", "*********"),
    ],
)
def test_national_ids(text: str, masked: str) -> None:
    assert national_id(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "123456789",  # a bare nine-digit number
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "123-00-4567",
        "123-45-0000",
        "123-45-6789-01",  # a longer reference
        "123-45 6789",  # mixed separators
        "DQ123456C",  # D is never the first letter of a NINO
        "12345678A",  # wrong DNI check letter
        "2024-01-15",
    ],
)
def test_national_id_near_misses(text: str) -> None:
    assert national_id(text) is None


# --- secrets ------------------------------------------------------------------------------------

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("key AKIAIOSFODNN7EXAMPLE in config", "key AKIA**** in config"),
        ("ASIAY34FZKBOKMUTVV7A", "ASIA****"),
        ("ghp_" + "x1" * 18, "ghp_****"),
        ("github_pat_11ABCDEFG0123456789abc_" + "a" * 59, "github_pat_****"),
        ("xoxb-2636463-1234567890123-AbCdEfGhIjKl", "xoxb-****"),
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_****"),
        ("rk_test_51H0000000000000000000000", "rk_test_****"),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "eyJ****",
        ),
        (
            f"key: {PEM} end",
            "key: -----BEGIN RSA PRIVATE KEY-----****-----END RSA PRIVATE KEY----- end",
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n",
            "-----BEGIN OPENSSH PRIVATE KEY-----****-----END OPENSSH PRIVATE KEY-----",
        ),
        ("password=hunter2 next", "password=**** next"),
        ("DB_PASSWORD: 'c0rrect horse'", "DB_PASSWORD: '****'"),
        ('{"api_key": "abc123", "user": "x"}', '{"api_key": "****", "user": "x"}'),
        ('{"password": "hun\\"ter2"}', '{"password": "****"}'),
        (
            "https://x.io/cb?access_token=abc.def&state=1",
            "https://x.io/cb?access_token=****&state=1",
        ),
        ("postgres://app:s3cret@db.internal:5432/app", "postgres://app:****@db.internal:5432/app"),
        # Redis and others take a password without a user name.
        ("redis://:s3cret@cache:6379/0", "redis://:****@cache:6379/0"),
        ("REDIS_URL=rediss://:s3cret@cache", "REDIS_URL=rediss://:****@cache"),
        ("Authorization: Bearer abcdefghijklmnop1234", "Authorization: Bearer ****"),
        ("Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Authorization: Basic ****"),
    ],
)
def test_secrets_keep_their_prefix(text: str, masked: str) -> None:
    assert secret(text) == masked


def test_gatehouse_tokens_are_secrets() -> None:
    import secrets as random

    for prefix in ("ghu_", "gha_", "ghj_"):
        token = prefix + random.token_urlsafe(32)
        assert secret(f"token {token} leaked") == f"token {prefix}**** leaked"


@pytest.mark.parametrize(
    "text",
    [
        "a basic understanding",
        "secret_santa: yes",
        "password_changed_at: 2024-01-01",
        "the token bucket",
        "password=****",
        "AKIAshort",
        "ghp_short",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "550e8400-e29b-41d4-a716-446655440000",
        "https://example.com/path?page=2",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    ],
)
def test_secret_near_misses(text: str) -> None:
    assert secret(text) is None


# --- sets and shapes ----------------------------------------------------------------------------

SAMPLES = [
    "john.doe@example.com",
    "4111 1111 1111 1111",
    "+44 20 7946 0958",
    "123-45-6789",
    "AKIAIOSFODNN7EXAMPLE",
    PEM,
    "password=hunter2",
    "ghp_" + "x1" * 18,
]


def test_detector_set_applies_its_detectors_in_a_fixed_order() -> None:
    everything = DetectorSet(DETECTORS)
    text = "mail john@example.com, card 4111111111111111, ssn 123-45-6789, +1 415 555 2671"
    assert everything.mask(text) == (
        "mail ***@example.com, card **** **** **** 1111, ssn ***-**-****, ***-***-**71"
    )
    assert DetectorSet(["email"]).mask(text) == text.replace("john@", "***@")
    assert DetectorSet([]).mask(text) is None
    assert not DetectorSet([])
    assert DetectorSet(["credit_card"]).cards


def test_unknown_detector_is_refused() -> None:
    with pytest.raises(UnknownDetector, match="iban"):
        DetectorSet(["email", "iban"])


@pytest.mark.parametrize("text", SAMPLES)
def test_replacements_are_safe_and_final(text: str) -> None:
    masked = DetectorSet(DETECTORS).mask(text)
    assert masked is not None
    replaced = masked.replace(text, "")
    for char in "\t\n\\\"',;":
        assert char not in replaced, (text, masked)
    assert DetectorSet(DETECTORS).mask(masked) is None  # idempotent


@given(st.text(max_size=200))
def test_detectors_never_fail_and_are_idempotent(text: str) -> None:
    everything = DetectorSet(DETECTORS)
    masked = everything.mask(text)
    if masked is not None:
        assert everything.mask(masked) is None

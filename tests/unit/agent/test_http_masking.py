"""Masking of HTTP response bodies: JSON keys and detectors, still valid JSON; text bodies."""

from __future__ import annotations

import json

from agent.http.masking import BodyMasker

SPEC = {"rules": [{"name": "pii", "columns": ["Origin", "ssn"], "detectors": ["email"]}]}


def test_json_keys_and_detected_values_are_masked_and_the_json_stays_valid() -> None:
    masker = BodyMasker.from_spec(SPEC)
    assert masker is not None
    body = json.dumps(
        {"origin": "10.0.0.1", "users": [{"mail": "bob@example.com", "ssn": {"n": 1}}], "n": 2}
    ).encode()
    masked = masker.mask(body, "application/json")
    assert masked is not None
    document = json.loads(masked)
    assert document["origin"] == "****"
    assert document["users"][0]["ssn"] == "****"
    assert "bob@example.com" not in masked.decode()
    assert document["n"] == 2


def test_nothing_found_is_none_and_text_bodies_are_masked_too() -> None:
    masker = BodyMasker.from_spec(SPEC)
    assert masker is not None
    assert masker.mask(b'{"a": "b"}', "application/json") is None
    text = masker.mask(b"write to bob@example.com", "text/plain")
    assert text is not None and b"bob@example.com" not in text
    assert BodyMasker.applies("application/problem+json")
    assert not BodyMasker.applies("application/octet-stream")


def test_no_rules_no_masker() -> None:
    assert BodyMasker.from_spec({"rules": []}) is None

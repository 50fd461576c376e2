"""What an `http.request` event keeps of a request's headers and query: no credential."""

from __future__ import annotations

import pytest

from controlplane.relay.http.events import REDACTED, redacted_headers, redacted_query
from redact.detectors import DetectorSet

SECRET = "Zq9hunter2xYk"
DETECTORS = DetectorSet(["secret"])


@pytest.mark.parametrize(
    "name",
    [
        "key",  # Google APIs: ?key=AIza…
        "sig",  # Azure shared access signatures
        "X-Amz-Signature",  # S3 presigned URLs
        "subscription-key",
        "access_token",
        "client_secret",
    ],
)
def test_query_values_under_credential_names_are_redacted(name: str) -> None:
    recorded = redacted_query(f"q=1&{name}={SECRET}", DETECTORS)
    assert SECRET not in recorded
    assert recorded == f"q=1&{name}=%5Bredacted%5D"


@pytest.mark.parametrize(
    "name",
    [
        "Ocp-Apim-Subscription-Key",  # Azure API Management
        "X-Functions-Key",  # Azure Functions
        "X-Access-Key",
        "X-Hub-Signature-256",
        "X-Auth-Token",
        "Proxy-Authorization",
    ],
)
def test_headers_whose_names_say_key_or_signature_are_redacted(name: str) -> None:
    assert redacted_headers(((name, SECRET), ("Accept", "*/*")), DETECTORS) == [
        [name, REDACTED],
        ["Accept", "*/*"],
    ]


@pytest.mark.parametrize("name", ["q", "page", "design", "signal"])
def test_ordinary_names_are_kept(name: str) -> None:
    assert redacted_query(f"{name}=1", DETECTORS) == f"{name}=1"

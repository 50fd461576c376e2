"""Masking of HTTP response bodies at the agent: masked values never leave its network.

The connection's masking rules are the same as a database's (agent/masking.py reads them):
`columns` name JSON keys here — the value under such a key, whatever it is, becomes
``"****"`` — and `detectors` (redact/) find e-mail addresses, card numbers, secrets... in every
string of a JSON document, and in a text body. A JSON document stays valid JSON; a body that
claims to be JSON and is not is masked as text. Other content types pass unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agent.masking import TEXT_MASK, MaskingPolicy

__all__ = ["MASK_LIMIT", "BodyMasker"]

MASK_LIMIT: Final = 16 * 1024 * 1024
"""Most bytes of a response body held to be masked; a larger one is refused, not sent."""


@dataclass(frozen=True, slots=True)
class BodyMasker:
    policy: MaskingPolicy
    limit: int = MASK_LIMIT

    @classmethod
    def from_spec(cls, spec: Mapping[str, object] | None) -> BodyMasker | None:
        """None when no rule masks anything (MaskingError: a rule this agent cannot apply)."""
        policy = MaskingPolicy.from_spec(spec)
        return None if policy is None else cls(policy)

    @staticmethod
    def applies(content_type: str) -> bool:
        """JSON and text bodies are masked (a body with no type is treated as text)."""
        kind = content_type.split(";", 1)[0].strip().lower()
        return not kind or kind.startswith("text/") or kind.endswith(("json", "+json", "xml"))

    def mask(self, body: bytes, content_type: str) -> bytes | None:
        """The body masked, or None when nothing was found."""
        text = body.decode("utf-8", "surrogateescape")
        if "json" in content_type.lower():
            try:
                document = json.loads(text)
            except (ValueError, RecursionError):
                document = None
            else:
                changed, masked = self._value(document)
                return json.dumps(masked, ensure_ascii=False).encode() if changed else None
        found = self.policy.detectors.mask(text)
        return None if found is None else found.encode("utf-8", "surrogateescape")

    def _value(self, value: object) -> tuple[bool, object]:
        if isinstance(value, str):
            found = self.policy.detectors.mask(value)
            return (False, value) if found is None else (True, found)
        if isinstance(value, list):
            pairs = [self._value(item) for item in value]
            return any(changed for changed, _ in pairs), [item for _, item in pairs]
        if isinstance(value, dict):
            changed = False
            out: dict[str, object] = {}
            for key, item in value.items():
                if key.lower() in self.policy.columns:
                    out[key], changed = TEXT_MASK, True
                    continue
                item_changed, out[key] = self._value(item)
                changed = changed or item_changed
            return changed, out
        if isinstance(value, int | float) and self.policy.detectors.cards:
            found = self.policy.detectors.mask(str(value))
            return (False, value) if found is None else (True, found)
        return False, value

"""A connection's masking rules, as every protocol's masker reads them.

A rule names columns to mask whole (in HTTP: JSON keys) and detectors (redact/) that find values
to mask anywhere; the rules of one connection are merged into one ``MaskingPolicy``. How a value
is replaced is each protocol's business, since it must stay valid in that protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from redact.detectors import DetectorSet, UnknownDetector

__all__ = ["TEXT_MASK", "MaskingError", "MaskingPolicy"]

TEXT_MASK: Final = "****"
"""What replaces a text value masked whole."""


class MaskingError(ValueError):
    """The connection's masking rules cannot be applied; the session must not start."""


@dataclass(frozen=True, slots=True)
class MaskingPolicy:
    """All masking rules of one connection, merged: every rule applies to every result."""

    columns: frozenset[str]
    """Column names to mask whole, lower-cased (names match case-insensitively)."""
    detectors: DetectorSet
    rules: tuple[str, ...]

    @classmethod
    def from_spec(cls, spec: Mapping[str, object] | None) -> MaskingPolicy | None:
        """Read ``ConnectionSpec.masking`` (``{"rules": [{name, columns, detectors}]}``).

        None when no rule masks anything. Raises MaskingError on anything unreadable, such as a
        detector this agent does not have: a rule it cannot apply must not pass as no rule.
        """
        rules = (spec or {}).get("rules") or []
        if not isinstance(rules, list):
            raise MaskingError("masking: 'rules' is not a list")
        names: list[str] = []
        columns: set[str] = set()
        detectors: set[str] = set()
        for rule in rules:
            if not isinstance(rule, Mapping):
                raise MaskingError("masking: a rule is not a mapping")
            name = str(rule.get("name", "?"))
            names.append(name)
            for key, into in (("columns", columns), ("detectors", detectors)):
                values = rule.get(key) or []
                if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                    raise MaskingError(f"masking rule {name!r}: {key} is not a list of names")
                into.update(v.lower() if key == "columns" else v for v in values)
        try:
            detector_set = DetectorSet(detectors)
        except UnknownDetector as exc:
            raise MaskingError(str(exc)) from None
        if not columns and not detector_set:
            return None
        return cls(frozenset(columns), detector_set, tuple(names))

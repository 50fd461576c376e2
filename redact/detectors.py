"""Value detectors: find sensitive values inside text and mask only those parts.

Each detector takes a text and returns it with every finding replaced, or None when it found
nothing (so that the caller knows, without comparing strings, that the value is untouched).
A detector replaces the sensitive part only: ``"mail john@example.com today"`` becomes
``"mail ***@example.com today"``.

The replacements are fixed shapes (documented in ``docs/masking.md``) chosen so that:

* they contain no tab, newline, backslash, quote, comma or semicolon, so that a replacement
  inside a COPY row, a JSON string or a CSV field keeps it well formed;
* no detector finds anything in another one's replacement (masking is idempotent);
* what they keep is what people need to work with a masked value and nothing that identifies
  its owner: an e-mail keeps its domain, a card number its last four digits (as PCI DSS
  allows), a phone number its last two digits, a token its well-known prefix.

Detection is by pattern with validation where the value has a check (Luhn for card numbers,
the check letter of a Spanish DNI, the validity rules of a US SSN). Patterns are compiled
once; each detector first asks a cheap question (an ``in`` test or one short regular expression)
that rules out most values, so that masking ordinary text costs little.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = [
    "DETECTORS",
    "Detect",
    "DetectorSet",
    "UnknownDetector",
    "credit_card",
    "email",
    "is_card_number",
    "national_id",
    "phone",
    "secret",
]

Detect = Callable[[str], str | None]


class UnknownDetector(ValueError):
    """A masking rule names a detector this agent does not have."""


def _sub(
    pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str], text: str
) -> str | None:
    """Replace every match for which ``replace`` returns a different text; None if none did."""
    found = False

    def one(match: re.Match[str]) -> str:
        nonlocal found
        new = replace(match)
        if new != match.group(0):
            found = True
        return new

    result = pattern.sub(one, text)
    return result if found else None


# --- e-mail -------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+\-])"  # the local part starts here, not in the middle of a word
    r"[\w.%+\-]+@"
    r"((?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63})"  # labels, then an alphabetic TLD
    r"(?![\w\-])"
)
_RETINA = re.compile(r"\d+(?:\.\d+)?x\.")  # icon@2x.png is a file name, not an address


def _email(match: re.Match[str]) -> str:
    domain = match.group(1)
    if _RETINA.match(domain):
        return match.group(0)
    return "***@" + domain


def _email_core(text: str) -> str | None:
    return _sub(_EMAIL, _email, text)


def _email_hint(text: str) -> bool:
    return "@" in text


def email(text: str) -> str | None:
    """E-mail addresses: the local part goes, the domain stays (``***@example.com``)."""
    return _email_core(text) if "@" in text else None


# --- card numbers -------------------------------------------------------------------------------

# 13 to 19 digits starting with 2-6 (the major industry identifiers of payment cards: 2 and 5
# Mastercard, 3 Amex/Diners/JCB, 4 Visa, 6 Discover/UnionPay/Maestro), optionally grouped by
# single spaces or dashes; not part of a longer number, word, decimal or dashed identifier.
_CARD = re.compile(
    r"(?<![\w.,\-])(?<!\d )[2-6]\d{3}(?:[ \-]?\d){9,15}(?![\w])(?![.,\-]\d)", re.ASCII
)
# The question every number detector asks first: six digits, at most one separator apart (a
# NINO has six, a DNI seven, an SSN nine, phone numbers eight and more, cards thirteen).
_SIX_DIGITS = re.compile(r"[0-9](?:[ ().\-/]?[0-9]){5}")


def _digit_hint(text: str) -> bool:
    return _SIX_DIGITS.search(text) is not None


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def is_card_number(digits: str) -> bool:
    """Whether a plain digit string is a plausible payment card number (Luhn-checked)."""
    return (
        13 <= len(digits) <= 19
        and digits.isascii()
        and digits.isdigit()
        and "2" <= digits[0] <= "6"
        and digits.count(digits[0]) != len(digits)  # 4444 4444 4444 4448 passes Luhn
        and _luhn(digits)
    )


def _card(match: re.Match[str]) -> str:
    text = match.group(0)
    separators = {c for c in text if c in " -"}
    if len(separators) > 1:
        return text  # mixed separators: a date, a version, a reference, not a card
    if separators:
        groups = text.split(separators.pop())
        if len(groups[0]) != 4 or any(not 3 <= len(g) <= 6 for g in groups[1:]):
            return text
    digits = text.replace(" ", "").replace("-", "")
    if not is_card_number(digits):
        return text
    return "**** **** **** " + digits[-4:]


def _card_core(text: str) -> str | None:
    return _sub(_CARD, _card, text)


def credit_card(text: str) -> str | None:
    """Payment card numbers that pass the Luhn check: ``**** **** **** 1234``."""
    return _card_core(text) if _digit_hint(text) else None


# --- phone numbers ------------------------------------------------------------------------------

_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .\-/])"
    r"(?:"
    r"(?P<intl>\+[1-9]\d{0,2}(?:[ .\-]?\(?\d{1,5}\)?){1,6})"  # E.164 and spaced forms
    r"|(?P<nanp>(?:1[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])\d{3}[ .\-]\d{4})"  # (415) 555-2671
    r"|(?P<national>(?:\(0[1-9]\d{0,4}\)|0[1-9]\d{0,4}[ \-/])[ ]?\d{2,8}(?:[ \-]\d{2,8}){0,3})"
    r")"
    r"(?![\w)])(?![.\-/:]\d)",
    re.ASCII,
)
# dd-mm-yyyy (and dd/mm/yy at the end): a date, even when a time follows it.
_DATE_LIKE = re.compile(r"\d{1,2}([./\-])\d{1,2}\1(?:\d{4}|\d{2}(?![./\- ]?\d))")


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = [c for c in text if "0" <= c <= "9"]
    if match.group("intl") is not None:
        plausible = 8 <= len(digits) <= 15
    elif match.group("nanp") is not None:
        plausible = len(digits) in (10, 11)
    else:  # a national number with a trunk prefix 0, e.g. 020 7946 0958, 06-12345678
        plausible = 9 <= len(digits) <= 12 and _DATE_LIKE.match(text) is None
    if not plausible:
        return text
    return "***-***-**" + "".join(digits[-2:])


def phone(text: str) -> str | None:
    """Phone numbers, international (``+44 20 7946 0958``) or national with separators.

    Plain digit strings are not phone numbers here (they are as often order ids or amounts),
    nor are dates, times, IP addresses or card numbers. Kept: the last two digits.
    """
    return _phone_core(text) if _digit_hint(text) else None


def _phone_core(text: str) -> str | None:
    return _sub(_PHONE, _phone, text)


# --- national identifiers -----------------------------------------------------------------------

_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
_NATIONAL = re.compile(
    r"(?<![\w\-])(?:"
    # US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000; dashes or spaces.
    r"(?P<ssn>(?!000|666|9)\d{3}(?P<sep>[\- ])(?!00)\d{2}(?P=sep)(?!0000)\d{4})"
    # UK National Insurance number: letters the HMRC never issues are excluded.
    r"|(?P<nino>(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r"(?: ?\d{2}){3} ?[A-D])"
    # Spanish DNI (8 digits) and NIE (X/Y/Z and 7 digits) with their check letter.
    r"|(?P<dni>[XYZ]?\d{7,8}-?[A-Z])"
    r")(?![\w])(?!-\d)",
    re.ASCII,
)


def _dni_valid(text: str) -> bool:
    body = text.replace("-", "")
    number, letter = body[:-1], body[-1]
    if number[0] in "XYZ":
        if len(number) != 8:
            return False
        number = str("XYZ".index(number[0])) + number[1:]
    elif len(number) != 8:
        return False
    return _DNI_LETTERS[int(number) % 23] == letter


def _national(match: re.Match[str]) -> str:
    text = match.group(0)
    if match.group("ssn") is not None:
        return "***-**-****"
    if match.group("dni") is not None and not _dni_valid(text):
        return text
    return "*" * len(text)


def national_id(text: str) -> str | None:
    """US SSNs (``***-**-****``), UK National Insurance numbers, Spanish DNI/NIE.

    Only identifiers with a format or a check that sets them apart from other numbers: a bare
    nine-digit number is not taken for an SSN.
    """
    return _national_core(text) if _digit_hint(text) else None


def _national_core(text: str) -> str | None:
    return _sub(_NATIONAL, _national, text)


# --- secrets ------------------------------------------------------------------------------------

_PEM = re.compile(
    # Whole blocks, or up to the end of the base64 when the block was cut short.
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*)PRIVATE KEY(?P<block>(?: BLOCK)?)-----"
    r"(?:.*?-----END (?P=kind)PRIVATE KEY(?P=block)-----|[A-Za-z0-9+/= \r\n\\:\-]*)",
    re.DOTALL,
)


def _pem(match: re.Match[str]) -> str:
    kind, block = match.group("kind"), match.group("block")
    return f"-----BEGIN {kind}PRIVATE KEY{block}-----****-----END {kind}PRIVATE KEY{block}-----"


def _keep_prefix(match: re.Match[str]) -> str:
    return match.group("keep") + "****"


# Token formats, each with the words one of which a text must contain for it to apply: a few
# `in` tests rule out nearly every value before any regular expression runs. Group `keep` is
# what stays of a finding.
_TOKENS: tuple[tuple[tuple[str, ...], re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (("-----BEGIN",), _PEM, _pem),
    # AWS access key ids: long-term AKIA, temporary ASIA.
    (
        ("AKIA", "ASIA"),
        re.compile(r"(?<![A-Z0-9])(?P<keep>AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
        _keep_prefix,
    ),
    # GitHub tokens (ghp_ gho_ ghu_ ghs_ ghr_), fine-grained PATs, and Gatehouse's own tokens
    # (ghu_ people, gha_ agent credentials, ghj_ join tokens: 43 url-safe characters).
    (
        ("gh", "github_pat_"),
        re.compile(
            r"(?<![\w\-])(?P<keep>gh[pousraj]_|github_pat_)[A-Za-z0-9_\-]{30,255}(?![\w\-])"
        ),
        _keep_prefix,
    ),
    (("xox",), re.compile(r"(?<![\w\-])(?P<keep>xox[abposre]-)[A-Za-z0-9\-]{10,}"), _keep_prefix),
    # Stripe secret and restricted keys, webhook signing secrets.
    (
        ("k_live_", "k_test_", "whsec_"),
        re.compile(r"(?<![\w\-])(?P<keep>[sr]k_live_|[sr]k_test_|whsec_)[A-Za-z0-9]{16,}"),
        _keep_prefix,
    ),
    # JWTs: a JSON header, a JSON payload, a signature (empty with alg none).
    (
        ("eyJ",),
        re.compile(
            r"(?<![\w\-])(?P<keep>eyJ)[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"
        ),
        _keep_prefix,
    ),
    # Passwords in URLs: scheme://user:password@host, and scheme://:password@host (Redis).
    (
        ("://",),
        re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.\-]{1,20}://[^\s:/@]*:)[^\s@/]+(?=@)"),
        _keep_prefix,
    ),
    # HTTP credentials: bearer tokens, and basic credentials after an Authorization header.
    (
        ("earer ", "EARER "),
        re.compile(r"(?P<keep>\b(?:Bearer|BEARER|bearer) )[A-Za-z0-9._~+/\-]{16,}=*"),
        _keep_prefix,
    ),
    (
        ("uthorization", "UTHORIZATION"),
        re.compile(r"(?P<keep>\b(?i:authorization)\s*[:=]\s*(?i:basic) )[A-Za-z0-9+/]{8,}=*"),
        _keep_prefix,
    ),
)

# key = value, key: value, "key": "value" where the key names a secret.
_KEYWORDS = ("passw", "passphrase", "secret", "token", "key", "credential")
_ASSIGNMENT = re.compile(
    r"(?i:(?P<key>(?<![\w\-])[\w.\-]*?"
    r"(?:passw(?:or)?d|passphrase|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key|"
    r"credentials?)"
    r"[\"']?\s*[:=]\s*))"
    r"(?:\"(?P<double>(?:[^\"\\\n]|\\.)+)\""  # "quoted", escapes included
    r"|'(?P<single>[^'\n]+)'"
    r"|(?P<bare>(?:[^\s'\"&;,\\]|\\.)+))"
)


def _assignment(match: re.Match[str]) -> str:
    value = match.group("double") or match.group("single") or match.group("bare")
    if value.strip("*") == "":
        return match.group(0)  # already masked
    quote = '"' if match.group("double") else "'" if match.group("single") else ""
    return f"{match.group('key')}{quote}****{quote}"


def _secret_hint(text: str) -> bool:
    """Whether ``text`` has a character or word that every secret pattern needs."""
    return (
        "=" in text  # password=…
        or ":" in text  # "api_key": …, scheme://user:password@, Authorization: Basic …
        or "-" in text  # PEM armour, Slack tokens
        or "_" in text  # GitHub, Gatehouse and Stripe tokens
        or "AKIA" in text
        or "ASIA" in text
        or "eyJ" in text
        or "earer " in text
        or "EARER " in text
    )


def _secret_core(text: str) -> str | None:
    result: str | None = None
    for words, pattern, replace in _TOKENS:
        for word in words:  # (a loop, not any(): this runs for many values)
            if word in text:
                masked = _sub(pattern, replace, text if result is None else result)
                if masked is not None:
                    result = masked
                break
    current = text if result is None else result
    if "=" in current or ":" in current:
        lower = current.lower()
        for word in _KEYWORDS:
            if word in lower:
                assigned = _sub(_ASSIGNMENT, _assignment, current)
                if assigned is not None:
                    result = assigned
                break
    return result


def secret(text: str) -> str | None:
    """API keys, tokens, private keys and password assignments; their prefix stays.

    ``AKIA****``, ``ghp_****``, ``xoxb-****``, ``sk_live_****``, ``eyJ****`` (a JWT), a PEM
    block's armour around ``****``, ``postgres://app:****@db`` (``redis://:****@cache``),
    ``Bearer ****``, and ``password=****`` / ``"api_key": "****"`` for any key that names a secret.
    """
    return _secret_core(text) if _secret_hint(text) else None


# --- sets ---------------------------------------------------------------------------------------

DETECTORS: dict[str, Detect] = {
    "email": email,
    "credit_card": credit_card,
    "phone": phone,
    "national_id": national_id,
    "secret": secret,
}
"""Every detector by the name policy files use (``masking: [{detectors: [...]}]``)."""

# Secrets first (a PEM block or a URL may hold what looks like an e-mail or a number), then
# the specific number formats before the looser phone patterns.
_ORDER = ("secret", "email", "credit_card", "national_id", "phone")


_STEPS: dict[str, tuple[Callable[[str], bool], Detect]] = {
    "secret": (_secret_hint, _secret_core),
    "email": (_email_hint, _email_core),
    "credit_card": (_digit_hint, _card_core),
    "national_id": (_digit_hint, _national_core),
    "phone": (_digit_hint, _phone_core),
}
"""Each detector as (a cheap question that rules most values out, the search itself)."""


class DetectorSet:
    """Several detectors applied in a fixed order; each sees the previous ones' output.

    The cheap questions are asked of the original text, and the number detectors' shared one
    only once (what a detector puts in never makes another one's question true when it was not).
    """

    __slots__ = ("_steps", "names")

    def __init__(self, names: Iterable[str]) -> None:
        wanted = set(names)
        unknown = wanted - DETECTORS.keys()
        if unknown:
            raise UnknownDetector(
                f"unknown masking detector(s) {', '.join(sorted(unknown))}; "
                f"this agent knows {', '.join(_ORDER)}"
            )
        self.names = tuple(n for n in _ORDER if n in wanted)
        self._steps = tuple(_STEPS[n] for n in self.names)

    def __bool__(self) -> bool:
        return bool(self._steps)

    @property
    def cards(self) -> bool:
        """Whether card numbers are to be found (numeric columns are checked for them too)."""
        return "credit_card" in self.names

    def mask(self, text: str) -> str | None:
        """``text`` with every finding masked, or None when no detector found anything."""
        result: str | None = None
        digits: bool | None = None
        for hint, search in self._steps:
            if hint is _digit_hint:
                if digits is None:
                    digits = _digit_hint(text)
                if not digits:
                    continue
            elif not hint(text):
                continue
            masked = search(text if result is None else result)
            if masked is not None:
                result = masked
        return result

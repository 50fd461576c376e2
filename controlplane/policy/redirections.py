"""Where a shell text gives a command some other stdin than the session's, read as a shell would.

``sh <&0``, ``exec 3<&0; sh <&3``, ``bash <(cat)``, ``sh <<< "$(cat)"``, ``sh </dev/stdin``:
the command line names a shell, but its program arrives by a redirection, which a word-by-word
reading of the command misses (the splitter in ``commands.py`` keeps ``<`` inside words and
drops the quotes that tell a literal ``'<'`` from an operator). So `stdin_redirection` reads
the text itself, with the shell's quoting: a ``<`` inside single quotes is a character, inside
``"$( … )"`` it is an operator again; in ``$(( a < b ))``, ``(( … ))`` and ``[[ a < b ]]`` a
lone ``<`` compares (``<&``, ``<(`` and ``<<<`` still count there: bash reads ``((…) )`` as
nested subshells when it is no arithmetic).

Every redirection of fd 0 counts — a file, a here-document or here-string, a process
substitution, a duplicate (``<&3``, ``0>&3``) — except the two that give no input at all
(``</dev/null`` and ``<&-``). A redirection onto another descriptor (``3<&0``) does not count by
itself: what later reads that descriptor does (``<&3``, ``/dev/fd/3``).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["stdin_redirection"]

_OPERATOR_CHARS: Final = frozenset(" \t\r\n;&|()<>")
_NO_INPUT: Final = frozenset({"/dev/null"})
_MAX_NESTING: Final = 64
_WRITTEN: Final = re.compile(
    r"(?P<fd>\d+|\{\w+\})?(?P<operator><<<|<<-?|<>|<&|<\(|<|>&|>>|>\||>)\s*"
    r"(?P<target>[^\s;&|<>]*)"
)


def stdin_redirection(text: str) -> str | None:
    """The first redirection of fd 0 in shell `text`, as written (``<&0``, ``<(``); None when
    the text has none."""
    return _Scanner(text).code(0, None)[1]


class _Scanner:
    """One pass over a shell text; each method returns where it stopped and what it found."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.depth = 0

    def code(
        self, i: int, stop: str | None, *, comparing: bool = False, quoted: bool = False
    ) -> tuple[int, str | None]:
        """Shell code from `i` up to `stop` (``)`` of ``$(``, a backquote, ``))`` of arithmetic,
        ``]]`` of a test, ``"`` of a quoted string, or the end); `comparing`: inside
        arithmetic or a test; `quoted`: inside ``"…"``, where only substitutions are code."""
        if self.depth >= _MAX_NESTING:  # unsure, and says so
            return len(self.text), f"(cannot tell: substitutions nested deeper than {_MAX_NESTING})"
        self.depth += 1
        try:
            return self.scan(i, stop, comparing, quoted)
        finally:
            self.depth -= 1

    def scan(
        self, i: int, stop: str | None, comparing: bool, quoted: bool
    ) -> tuple[int, str | None]:
        """`code` within the nesting limit."""
        text, n = self.text, len(self.text)
        while i < n:
            if text[i] == "\\":
                i += 2
                continue
            if stop is not None and text.startswith(stop, i):
                return i + len(stop), None
            scanned = self.substitution(i)
            if scanned is None and not quoted:
                scanned = self.construct(i, comparing)
            if scanned is None:
                i += 1
                continue
            i, found = scanned
            if found is not None:
                return i, found
        return n, None

    def substitution(self, i: int) -> tuple[int, str | None] | None:
        """``$(( … ))``, ``$( … )`` or a backquoted command at `i`, scanned; None if none."""
        text = self.text
        if text.startswith("$((", i):
            return self.code(i + 3, "))", comparing=True)
        if text.startswith("$(", i):
            return self.code(i + 2, ")")
        if text[i] == "`":
            return self.code(i + 1, "`")
        return None

    def construct(self, i: int, comparing: bool) -> tuple[int, str | None] | None:
        """Quotes, arithmetic, a test, a comment or a redirection at `i`; None if none."""
        text, n = self.text, len(self.text)
        c = text[i]
        if c == "'":
            end = text.find("'", i + 1)
            return (n if end < 0 else end + 1), None
        if c == '"':
            return self.code(i + 1, '"', quoted=True)
        if text.startswith(("((", "[["), i) and self.word_start(i):
            return self.code(i + 2, "))" if c == "(" else "]]", comparing=True)
        if c == "#" and self.word_start(i) and not comparing:
            end = text.find("\n", i)
            return (n if end < 0 else end), None
        if c in "<>" and (not comparing or text.startswith(("<&", "<(", "<<<"), i)):
            return i + 1, self.redirection(i)
        return None

    def word_start(self, i: int) -> bool:
        return i == 0 or self.text[i - 1] in _OPERATOR_CHARS

    def redirection(self, i: int) -> str | None:
        """The redirection at `i` as written (``<&0``, ``0<file``), if it is one of fd 0 (``<``
        with no number or 0, ``0>``); None otherwise."""
        text = self.text
        fd = self.descriptor(i)
        if fd != "0" and (text[i] == ">" or fd is not None):
            return None  # `2>&1`, `3<&0`, `2<file`: another descriptor
        written = _WRITTEN.match(text, i - len(fd or ""))
        assert written is not None  # the operator at `i` always matches
        operator, target = written.group("operator"), written.group("target").rstrip(")")
        if (operator, target) == ("<&", "-") or (operator == "<" and target in _NO_INPUT):
            return None  # stdin closed, or empty: nothing to read
        return written.group(0).strip()

    def descriptor(self, i: int) -> str | None:
        """The descriptor number (or ``{name}``) written right before the operator at `i` as
        a word of its own (``3<``); None for the operator's default."""
        text = self.text
        if i and text[i - 1] == "}":
            opening = text.rfind("{", 0, i)
            return text[opening:i] if opening >= 0 and self.word_start(opening) else None
        start = i
        while start and text[start - 1].isdigit():
            start -= 1
        if start == i or not self.word_start(start):
            return None
        return text[start:i]

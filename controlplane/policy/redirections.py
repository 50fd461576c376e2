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

    def code(self, i: int, stop: str | None, comparing: bool = False) -> tuple[int, str | None]:
        """Shell code from `i` up to `stop` (``)`` of ``$(``, a backquote, ``))`` of arithmetic,
        ``]]`` of a test, or the end); `comparing`: inside arithmetic or a test."""
        text, n = self.text, len(self.text)
        while i < n:
            c = text[i]
            found: str | None = None
            if c == "\\":
                i += 2
                continue
            if stop is not None and text.startswith(stop, i):
                return i + len(stop), None
            if c == "'":
                end = text.find("'", i + 1)
                i = n if end < 0 else end + 1
            elif c == '"':
                i, found = self.double_quoted(i + 1)
            elif text.startswith("$((", i) or (text.startswith("((", i) and self.word_start(i)):
                i, found = self.code(i + (3 if c == "$" else 2), "))", comparing=True)
            elif text.startswith("[[", i) and self.word_start(i):
                i, found = self.code(i + 2, "]]", comparing=True)
            elif text.startswith("$(", i) or c == "`":
                i, found = self.code(i + (2 if c == "$" else 1), ")" if c == "$" else "`")
            elif c == "#" and self.word_start(i) and not comparing:
                end = text.find("\n", i)
                i = n if end < 0 else end
            elif c in "<>":
                if not comparing or text.startswith(("<&", "<(", "<<<"), i):
                    found = self.redirection(i)
                i += 1
            else:
                i += 1
            if found is not None:
                return i, found
        return n, None

    def double_quoted(self, i: int) -> tuple[int, str | None]:
        """Inside ``"…"`` only substitutions are code."""
        text, n = self.text, len(self.text)
        while i < n:
            c = text[i]
            found: str | None = None
            if c == "\\":
                i += 2
                continue
            if c == '"':
                return i + 1, None
            if text.startswith("$((", i):
                i, found = self.code(i + 3, "))", comparing=True)
            elif text.startswith("$(", i) or c == "`":
                i, found = self.code(i + (2 if c == "$" else 1), ")" if c == "$" else "`")
            else:
                i += 1
            if found is not None:
                return i, found
        return n, None

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

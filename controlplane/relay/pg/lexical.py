"""The session's lexical settings: how the server will read the bytes of a statement.

The guard parses text with libpg_query, which reads UTF-8 with standard_conforming_strings on.
The server reads the same bytes in the session's ``client_encoding`` (a GBK or SJIS character
can swallow the quote or backslash after it) and, with ``standard_conforming_strings`` off,
treats a backslash in '…' as an escape. Both settings can change at any statement (SET,
set_config() in a function or trigger, ROLLBACK of a SET, the startup ``options``); the server
reports every change with a ParameterStatus, which the agent marks (decision 0010).

Pure ASCII without a backslash reads the same under every setting, so only text holding a byte
>= 0x80 or a backslash depends on them: the inspector parses such text only once every earlier
request was answered, and with the settings the server reported by then.

A configuration reload is reported too late for that: a session applies it right after reading
its next message and reports it after that statement ran. The agent therefore logs in with
client_encoding=UTF8, which a configuration file cannot override, and what depends on
standard_conforming_strings is read both ways (the guard, and the names in ``pg_sql``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Encodings whose reading the guard reproduces exactly. Sessions through gatehouse stay in UTF8
# (the agent ends one that leaves it, agent/pg/relay.py); anything else is unreadable here.
_EXACT: Final = frozenset({"UTF8", "UNICODE", "UTF-8"})


def sensitive(text: str) -> bool:
    """Whether the server's reading of ``text`` (strictly UTF-8 decoded) depends on the
    lexical settings: it holds a non-ASCII character or a backslash."""
    return not text.isascii() or "\\" in text


@dataclass(slots=True)
class LexicalSettings:
    """What the server last reported; None until it reported (at login it reports both)."""

    client_encoding: str | None = None
    standard_conforming_strings: str | None = None

    def update(self, name: str, value: str) -> None:
        if name == "client_encoding":
            self.client_encoding = value
        elif name == "standard_conforming_strings":
            self.standard_conforming_strings = value

    def unreadable(self, text: str) -> str | None:
        """Why the guard cannot read ``text`` as the server will, or None when it can."""
        if not text.isascii():
            encoding = self.client_encoding
            if encoding is None:
                return "the session's client_encoding is not known, so non-ASCII text is unreadable"
            if encoding.upper() not in _EXACT:
                return (
                    f"non-ASCII text in client_encoding {encoding} cannot be read exactly by the "
                    "gateway; use UTF8"
                )
        if "\\" in text and self.standard_conforming_strings != "on":
            return (
                "standard_conforming_strings is off (or not known) and the text holds a "
                "backslash: the gateway's parser reads string literals only as the server does "
                "with standard_conforming_strings on; turn it on"
            )
        return None

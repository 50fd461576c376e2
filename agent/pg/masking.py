"""Masking of a PostgreSQL session's results on the agent, before they leave its network.

``ResultMasker`` follows both directions of one session. From the frontend (what is written to
the target) it learns, in order, which requests the target will answer: a simple Query, or the
Parse, Bind (with its result formats), Describe, Execute, Close and Sync of the extended
protocol. From the backend it learns what each answer describes, and it rewrites:

* ``DataRow``: a column whose *name* a rule lists is masked whole; any other column goes through
  the rules' detectors. What replaces a value is always valid for the column's type and format:
  text types (text, varchar, bpchar, name, unknown) get replacement text in either format, json
  and jsonb get JSON, and every other type gets NULL (a -1 length is valid for every type);
* ``CopyData`` of a ``COPY … TO STDOUT`` in text or CSV format: the detectors run on each row. The
  column names of a COPY are unknown, so a connection with column rules refuses the output of a
  COPY TO STDOUT (the rows are dropped and the statement ends in an error), as it does a binary
  COPY, whose values it cannot reach;
* ``NotificationResponse`` payloads, and the text fields of ``ErrorResponse``/``NoticeResponse``
  (which quote values: ``Key (email)=(…) already exists``), go through the detectors.

Where the masker does not know the shape of a row (it should not happen) it fails closed:
every column of the row is sent as NULL and a warning is logged, without the values.

Message boundaries come from the session's ``MessageFramer``; a rewritten message gets new
length words. A result set that no rule touches is forwarded as the very bytes read (no copy),
also when a read ends in the middle of one of its rows. See ``docs/masking.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from agent.masking import TEXT_MASK, MaskingPolicy
from redact.detectors import DetectorSet, is_card_number
from wire.pg import codes, framing
from wire.pg import messages as pgm
from wire.pg.codes import (
    BIND_COMPLETE,
    BOOL,
    BPCHAR,
    BYTEA,
    CHAR,
    CLOSE_COMPLETE,
    COMMAND_COMPLETE,
    COPY_DATA,
    COPY_DONE,
    DATA_ROW,
    EMPTY_QUERY,
    INT2,
    INT4,
    INT8,
    JSON,
    JSONB,
    NAME,
    NO_DATA,
    NUMERIC,
    OID,
    PARSE_COMPLETE,
    PORTAL_SUSPENDED,
    ROW_DESCRIPTION,
    TEXT,
    UNKNOWN,
    VARCHAR,
)

__all__ = ["Masked", "ResultMasker"]

log = logging.getLogger(__name__)

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_NULL: Final = b"\xff\xff\xff\xff"

# Backend tags.
ERROR, NOTICE, READY = codes.ERROR_RESPONSE, codes.NOTICE_RESPONSE, codes.READY_FOR_QUERY
COPY_OUT, NOTIFICATION = codes.COPY_OUT_RESPONSE, codes.NOTIFICATION_RESPONSE
FUNCTION_RESULT = codes.FUNCTION_CALL_RESPONSE
_TERMINAL = frozenset({COMMAND_COMPLETE, EMPTY_QUERY, PORTAL_SUSPENDED, ERROR, READY})
"""Tags that end a statement or a cycle."""
_MARKED = _TERMINAL | frozenset(
    {PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE, ROW_DESCRIPTION, NO_DATA}
    | {codes.PARAMETER_STATUS, codes.COPY_IN_RESPONSE}
)
"""Tags the relay makes result marks of (``relay.result_marks``): also the answers that confirm
names, end a Describe, report a setting (decision 0010) or start a COPY FROM STDIN."""
_REWRITABLE = frozenset(
    {DATA_ROW, COPY_DATA, COPY_DONE, COMMAND_COMPLETE, ERROR, NOTICE, NOTIFICATION, FUNCTION_RESULT}
)
"""Tags of messages the masker may change or drop: only these are ever held back."""

# Frontend tags.
F_QUERY, F_PARSE, F_BIND, F_DESCRIBE = codes.QUERY, codes.PARSE, codes.BIND, codes.DESCRIBE
F_EXECUTE, F_CLOSE, F_SYNC, F_FUNCTION = codes.EXECUTE, codes.CLOSE, codes.SYNC, codes.FUNCTION_CALL

# Type oids (pg_type.dat). Domains arrive as their base type: RowDescription reports that.
TEXT_TYPES = frozenset({TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN})
"""Types whose text and binary forms are both the UTF-8 text: masked values stay text."""
OPAQUE_TYPES = frozenset(
    {
        BOOL, CHAR, INT2, INT4, OID,
        22, 24, 27, 28, 29, 30,  # int2vector, regproc, tid, xid, cid, oidvector
        600, 601, 602, 603, 604, 628, 718,  # geometric types
        650, 700, 701, 774, 790, 829, 869,  # cidr, float4, float8, macaddr8, money, macaddr, inet
        1082, 1083, 1114, 1184, 1186, 1266,  # date, time, timestamp(tz), interval, timetz
        1560, 1562, 2205, 2206, 2278,  # bit, varbit, regclass, regtype, void
        2950, 3220, 5069,  # uuid, pg_lsn, xid8
        3904, 3906, 3908, 3910, 3912, 3926,  # ranges of numbers and times
        1000, 1005, 1007, 1021, 1022, 1115, 1182, 1185, 2951,  # arrays of the above
    }
)  # fmt: skip
"""Types that cannot hold free text: detectors never look at them (int8 and numeric aside)."""

JSON_MASK = '"****"'
COPY_REFUSED_SQLSTATE = codes.INSUFFICIENT_PRIVILEGE


# --- values -------------------------------------------------------------------------------------

_KEEP: Final = object()
"""A value action's answer for "unchanged" (None means NULL, bytes a replacement)."""

ValueAction = Callable[[memoryview], object]


def _constant(replacement: bytes) -> ValueAction:
    return lambda value: replacement


def _to_null(value: memoryview) -> object:
    return None


def _text_action(detectors: DetectorSet) -> ValueAction:
    mask = detectors.mask

    def action(value: memoryview) -> object:
        masked = mask(str(value, "utf-8", "surrogateescape"))
        return _KEEP if masked is None else masked.encode("utf-8", "surrogateescape")

    return action


def _json_action(detectors: DetectorSet, *, jsonb_binary: bool) -> ValueAction:
    def action(value: memoryview) -> object:
        if jsonb_binary:
            if value[:1].tobytes() != b"\x01":
                return None  # a jsonb binary version we do not know: fail closed
            value = value[1:]
        masked = _mask_json(str(value, "utf-8", "surrogateescape"), detectors)
        if masked is _KEEP or masked is None:
            return masked
        assert isinstance(masked, str)
        data = masked.encode("utf-8", "surrogateescape")
        return b"\x01" + data if jsonb_binary else data

    return action


class _Number(str):
    """A JSON number kept as written, so that re-encoding a document does not change it."""


def _mask_json(text: str, detectors: DetectorSet) -> object:
    """JSON text with findings masked (still valid JSON), _KEEP, or None when it cannot be."""
    try:
        if "\\u" not in text:  # findings cannot hide behind escapes: mask the text in place
            masked = detectors.mask(text)
            if masked is None:
                return _KEEP
            try:
                json.loads(masked)
                return masked
            except ValueError:
                pass  # e.g. a card number that was a JSON number: walk the document instead
        document = json.loads(text, parse_int=_Number, parse_float=_Number, parse_constant=_Number)
        changed, masked_document = _walk(document, detectors)
        return _dump(masked_document) if changed else _KEEP
    except (ValueError, RecursionError):
        return None  # not JSON we can read (or nested deeper than Python will go): NULL


def _walk(node: object, detectors: DetectorSet) -> tuple[bool, object]:
    if isinstance(node, _Number):
        masked = detectors.mask(node)
        return (False, node) if masked is None else (True, masked)
    if isinstance(node, str):
        masked = detectors.mask(node)
        return (False, node) if masked is None else (True, masked)
    if isinstance(node, list):
        items = [_walk(item, detectors) for item in node]
        return any(c for c, _ in items), [v for _, v in items]
    if isinstance(node, dict):
        changed, result = False, {}
        for key, value in node.items():
            masked_key = detectors.mask(key)
            value_changed, masked_value = _walk(value, detectors)
            changed = changed or value_changed or masked_key is not None
            result[key if masked_key is None else masked_key] = masked_value
        return changed, result
    return False, node


def _dump(node: object) -> str:
    """Serialize like jsonb's output (``{"a": 1, "b": [2, 3]}``), numbers as they were written."""
    if isinstance(node, _Number):
        return str.__str__(node)
    if isinstance(node, str):
        return json.dumps(node, ensure_ascii=False)
    if isinstance(node, list):
        return "[" + ", ".join(_dump(item) for item in node) + "]"
    if isinstance(node, dict):
        return "{" + ", ".join(f"{_dump(k)}: {_dump(v)}" for k, v in node.items()) + "}"
    return json.dumps(node)  # true, false, null


def _card_number_action(type_oid: int, binary: bool) -> ValueAction:
    """int8 and numeric columns: a card number stored as a number becomes NULL."""

    def action(value: memoryview) -> object:
        if binary:
            digits = _int8_digits(value) if type_oid == INT8 else _numeric_digits(value)
        else:
            digits = bytes(value).partition(b".")[0].decode("ascii", "replace")
            fraction = bytes(value).partition(b".")[2]
            if fraction.strip(b"0"):
                return _KEEP
        return None if digits and is_card_number(digits) else _KEEP

    return action


def _int8_digits(value: memoryview) -> str:
    return str(struct.unpack("!q", value)[0]) if len(value) == 8 else ""


def _numeric_digits(value: memoryview) -> str:
    """The integer digits of a binary numeric when it is a whole positive number, else ""."""
    if len(value) < 8:
        return ""
    ndigits, weight, sign, _ = struct.unpack_from("!hhHh", value)
    if sign != 0 or not 0 <= weight <= 5 or len(value) != 8 + 2 * ndigits:
        return ""
    groups = struct.unpack_from(f"!{ndigits}h", value, 8)
    if any(groups[weight + 1 :]):
        return ""  # a fraction
    whole = list(groups[: weight + 1]) + [0] * (weight + 1 - min(ndigits, weight + 1))
    return "".join(f"{g:04d}" for g in whole).lstrip("0")


def _scan_action(detectors: DetectorSet, type_oid: int, binary: bool) -> ValueAction:
    """Other types (arrays, records, bytea, xml, tsvector, extension types): a value in which a
    detector finds anything becomes NULL, as no replacement is known to be valid for them."""
    mask = detectors.mask

    def action(value: memoryview) -> object:
        if type_oid == BYTEA and not binary and value[:2].tobytes() == b"\\x":
            try:
                raw = bytes.fromhex(str(value[2:], "ascii"))
            except ValueError:
                raw = bytes(value)
            text = raw.decode("utf-8", "replace")
        else:
            text = str(value, "utf-8", "replace")
        return _KEEP if mask(text) is None else None

    return action


# --- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowPlan:
    """What to do with each column of the DataRows of one result set."""

    actions: tuple[ValueAction | None, ...]
    """Per column; None leaves the column alone."""
    passthrough: bool
    """No column needs a look: DataRows go out as they came."""
    last: int = -1
    """The last column that needs a look: the values after it are not even read."""


FAIL_CLOSED = RowPlan((), passthrough=False)
"""The plan for rows of an unknown shape: every value becomes NULL."""


def _full_mask(column: pgm.Column, fmt: int) -> ValueAction:
    """The action for a column a rule names: replacement text where the type allows, else NULL."""
    oid = column.type_oid
    if oid in TEXT_TYPES:
        text = TEXT_MASK
        width = column.type_modifier - 4  # bpchar(n): keep the declared width, which is public
        if oid == BPCHAR and 0 < width <= 256:
            text = "*" * width
        return _constant(text.encode())
    if oid == CHAR:
        return _constant(b"*")
    if oid == JSON or (oid == JSONB and fmt == 0):
        return _constant(JSON_MASK.encode())
    if oid == JSONB:
        return _constant(b"\x01" + JSON_MASK.encode())
    return _to_null


def _detect(column: pgm.Column, fmt: int, detectors: DetectorSet) -> ValueAction | None:
    """The action for a column no rule names: the detectors, as far as its type allows."""
    oid, binary = column.type_oid, fmt == 1
    if not detectors or oid in OPAQUE_TYPES:
        return None
    if oid in TEXT_TYPES:
        return _text_action(detectors)
    if oid in (JSON, JSONB):
        return _json_action(detectors, jsonb_binary=oid == JSONB and binary)
    if oid in (INT8, NUMERIC):
        return _card_number_action(oid, binary) if detectors.cards else None
    return _scan_action(detectors, oid, binary)


def plan_rows(
    policy: MaskingPolicy, columns: Sequence[pgm.Column], formats: Sequence[int]
) -> RowPlan:
    """The plan for rows of ``columns`` sent in ``formats`` (one code per column)."""
    actions: list[ValueAction | None] = []
    for column, fmt in zip(columns, formats, strict=True):
        if fmt not in (0, 1):
            actions.append(_to_null)  # a format we cannot read: fail closed
        elif column.name.lower() in policy.columns:
            actions.append(_full_mask(column, fmt))
        else:
            actions.append(_detect(column, fmt, policy.detectors))
    active = [i for i, action in enumerate(actions) if action is not None]
    return RowPlan(tuple(actions), passthrough=not active, last=active[-1] if active else -1)


def _spread(formats: Sequence[int], count: int) -> list[int] | None:
    """Result format codes as Bind gives them (none: text, one: all, else one per column)."""
    if len(formats) == count:
        return list(formats)
    if len(formats) <= 1:
        return [formats[0] if formats else 0] * count
    return None


def mask_data_row(plan: RowPlan, body: memoryview) -> bytes | None:
    """The DataRow rewritten by ``plan`` (whole message), or None when no value changed.

    Only the values up to the plan's last masked column are read (and checked); the target's
    row is otherwise forwarded as it is, as it would be without masking.
    """
    n = len(body)
    if n < 2:
        raise framing.ProtocolError("malformed DataRow: truncated column count")
    (count,) = _INT16.unpack_from(body, 0)
    actions = plan.actions
    if count != len(actions) or plan is FAIL_CLOSED:
        return _null_row(body, count) if count else None
    unpack = _INT32.unpack_from
    pieces: list[bytes | memoryview] | None = None
    kept = 0  # start of the body bytes not yet copied into pieces
    pos = 2
    for action in actions[: plan.last + 1]:
        if n - pos < 4:
            raise framing.ProtocolError("malformed DataRow: truncated value length")
        (length,) = unpack(body, pos)
        start = pos + 4
        if length < 0:
            if length != -1:
                raise framing.ProtocolError(f"malformed DataRow: value length {length}")
            pos = start
            continue
        end = start + length
        if end > n:
            raise framing.ProtocolError(f"malformed DataRow: value length {length}")
        if action is not None:
            new = action(body[start:end])
            if new is not _KEEP:
                if pieces is None:
                    pieces = []
                pieces.append(body[kept:pos])
                if new is None:
                    pieces.append(_NULL)
                else:
                    assert isinstance(new, bytes)
                    pieces += (_INT32.pack(len(new)), new)
                kept = end
        pos = end
    if pieces is None:
        return None
    pieces.append(body[kept:])
    new_body = b"".join(pieces)
    return b"D" + _INT32.pack(len(new_body) + 4) + new_body


def _null_row(body: memoryview, count: int) -> bytes:
    """Fail closed: the row with every value NULL."""
    if count < 0:
        raise framing.ProtocolError(f"malformed DataRow: negative column count {count}")
    new_body = _INT16.pack(count) + _NULL * count
    return b"D" + _INT32.pack(len(new_body) + 4) + new_body


# --- errors, notices, notifications -------------------------------------------------------------

_SCANNED_FIELDS = frozenset(b"MDHWq")  # message, detail, hint, context, internal query
_KEY_DETAIL = re.compile(
    r"^Key \((?P<columns>.*?)\)=\((?P<values>.*)\)"
    r"(?P<rest> (?:already exists|is not present|is still referenced|conflicts with)\b.*)$",
    re.DOTALL,
)
_FAILING_ROW = re.compile(r"^Failing row contains \(.*\)\.?$", re.DOTALL)


def _mask_detail(text: str, columns: frozenset[str]) -> str | None:
    """PostgreSQL's details that quote a row or key (in English): masked for column rules."""
    if _FAILING_ROW.match(text):
        return "Failing row contains (****)."
    match = _KEY_DETAIL.match(text)
    if match and any(c.strip().strip('"').lower() in columns for c in match["columns"].split(",")):
        rest = match["rest"]
        rest = " conflicts with an existing key." if rest.startswith(" conflicts") else rest
        return f"Key ({match['columns']})=(****){rest}"
    return None


def _mask_fields(policy: MaskingPolicy, tag: int, body: memoryview) -> bytes | None:
    """An ErrorResponse/NoticeResponse with masked text fields, or None when unchanged."""
    raw = bytes(body)
    fields = raw[:-1].split(b"\0") if raw.endswith(b"\0\0") else None
    if fields is None or fields[-1] != b"":
        return None  # malformed: the relay's mark parser will say so
    changed = False
    out = []
    for item in fields[:-1]:
        code, value = item[:1], item[1:]
        if code and code[0] in _SCANNED_FIELDS:
            text = value.decode("utf-8", "surrogateescape")
            masked = policy.detectors.mask(text) if policy.detectors else None
            if code == b"D" and policy.columns:
                masked = _mask_detail(masked or text, policy.columns) or masked
            if masked is not None:
                changed = True
                value = masked.replace("\0", "").encode("utf-8", "surrogateescape")
        out.append(code + value)
    if not changed:
        return None
    new_body = b"\0".join(out) + b"\0\0"
    return bytes((tag,)) + _INT32.pack(len(new_body) + 4) + new_body


def _mask_notification(policy: MaskingPolicy, body: memoryview) -> bytes | None:
    """NotificationResponse: pid, channel, payload; the payload goes through the detectors."""
    raw = bytes(body)
    channel_end = raw.find(b"\0", 4)
    if not policy.detectors or channel_end < 0 or not raw.endswith(b"\0"):
        return None
    payload = raw[channel_end + 1 : -1].decode("utf-8", "surrogateescape")
    masked = policy.detectors.mask(payload)
    if masked is None:
        return None
    new_body = raw[: channel_end + 1] + masked.encode("utf-8", "surrogateescape") + b"\0"
    return b"A" + _INT32.pack(len(new_body) + 4) + new_body


def _copy_refused() -> bytes:
    return pgm.error_response(
        sqlstate=COPY_REFUSED_SQLSTATE,
        message=(
            "gatehouse: the output of COPY TO STDOUT cannot be masked on this connection "
            "(its masking rules name columns, which COPY rows do not, or the COPY is binary); "
            "use SELECT instead"
        ),
    )


# --- the session's state ------------------------------------------------------------------------


@dataclass(slots=True)
class _Statement:
    """A prepared statement; a new Parse under the same name makes a new object, but for
    a Close and Parse of the same text (what the control plane sends to make a statement that
    code may have prepared again the text it recorded): that keeps the description."""

    columns: list[pgm.Column] | None = None  # from Describe('S'); formats there are all 0
    digest: bytes = b""  # of the text Parsed


@dataclass(slots=True)
class _Portal:
    statement: _Statement | None
    formats: tuple[int, ...]
    described: list[pgm.Column] | None = None  # from Describe('P'): real formats
    plan: RowPlan | None = None


@dataclass(frozen=True, slots=True)
class _Request:
    """A frontend message the target will answer (or, for Sync/Query, end a cycle with)."""

    tag: int
    name: str = ""  # statement or portal
    kind: str = ""  # Describe/Close: 'S' or 'P'
    statement: str = ""  # Bind
    formats: tuple[int, ...] = ()  # Bind's result formats
    digest: bytes = b""  # Parse: of its text


_EXTENDED = frozenset({F_PARSE, F_BIND, F_DESCRIBE, F_EXECUTE, F_CLOSE})
_FORGETTING = frozenset({b"DEALLOCATE", b"DISCARD AL"})
"""CommandComplete tags (their first ten bytes) after which prepared statements may be gone."""


@dataclass(slots=True)
class Masked:
    """What to forward for one read of the target: bytes, and where statements ended in them."""

    data: bytes
    ends: list[framing.Message] = field(default_factory=list)
    """The messages result marks are made of, as forwarded, ``end`` relative to ``data``."""
    masked: list[bool] = field(default_factory=list)
    """For each of ``ends``: whether the statement it ends had values masked."""


_NONE, _SENT, _HELD = 0, 1, 2  # what became of a message split across reads
_COPY_MASK, _COPY_REFUSE = 1, 2  # what to do with the rows of a COPY TO STDOUT


class ResultMasker:
    """Masks one session's results; feed it both directions in the order they travel."""

    def __init__(self, policy: MaskingPolicy, framer: framing.MessageFramer | None = None) -> None:
        self.policy = policy
        self._framer = framer or framing.MessageFramer()
        # A message begun in an earlier read: forwarded as it came, or held to be masked whole.
        self._partial = _SENT if self._framer.pending else _NONE
        self._client = framing.MessageFramer()
        self._requests: deque[_Request] = deque()
        self._statements: dict[str, _Statement] = {}
        self._closed: tuple[str, _Statement] | None = None  # the statement closed last
        self._portals: dict[str, _Portal] = {}
        self._plan: RowPlan | None = None  # for the DataRows of the running statement
        self._masked = False  # the running statement had values masked
        self._warned = False
        self._copy = 0  # 0, or _COPY_MASK / _COPY_REFUSE while a COPY TO STDOUT runs

    # ---- frontend ---------------------------------------------------------------------------

    def client(self, data: bytes | bytearray | memoryview) -> None:
        """Frontend bytes, exactly as written to the target and before they are written."""
        for message in self._client.feed(data):
            request = _request(message)
            if request is not None:
                self._requests.append(request)

    # ---- backend ----------------------------------------------------------------------------

    def server(self, data: bytes) -> Masked:
        """Backend bytes as read; returns what to forward in their place."""
        view = memoryview(data)
        messages = self._framer.feed(view)
        carried, self._partial = self._partial, _NONE
        out = Masked(b"")
        parts: list[bytes | memoryview] = []
        emitted = 0  # bytes in parts
        run = 0  # start of the span of data to forward as it is, not yet in parts
        for index, message in enumerate(messages):
            new = self._inspect(message)
            if index == 0 and carried == _SENT:
                # Its first bytes went out with an earlier read; the rest is data[:end].
                if new is not None:  # cannot happen: its tag was known to need no masking
                    raise framing.ProtocolError("masking: a forwarded message needs masking")
            elif index == 0 and carried == _HELD:
                piece = message.raw if new is None else new
                parts.append(piece)
                emitted += len(piece)
                run = message.end
                self._end(out, message, emitted, new)
                continue
            elif new is not None:
                start = message.end - len(message.raw)
                if start > run:
                    parts.append(view[run:start])
                    emitted += start - run
                parts.append(new)
                emitted += len(new)
                run = message.end
                self._end(out, message, emitted, new)
                continue
            if message.tag in _MARKED:
                self._end(out, message, emitted + message.end - run, None)
        stop = messages[-1].end if messages else 0
        if self._framer.pending:
            if not messages and carried != _NONE:
                # The middle of a long message: forward it if its start went out already.
                self._partial = carried
                stop = len(view) if carried == _SENT else 0
            elif self._can_stream(view[stop]):
                self._partial, stop = _SENT, len(view)
            else:
                self._partial = _HELD
        if not parts and run == 0 and stop == len(view):
            out.data = data  # nothing masked, nothing held: the bytes as read
            return out
        if stop > run:
            parts.append(view[run:stop])
        out.data = b"".join(parts)
        return out

    def _end(self, out: Masked, message: framing.Message, end: int, new: bytes | None) -> None:
        """Record a message that ends a statement or a cycle at ``end`` of the output."""
        if message.tag not in _MARKED or new == b"":
            return
        if new is not None:
            raw = memoryview(new)
            message = framing.Message(raw[0], raw[5:], raw, end)
        else:
            message = framing.Message(message.tag, message.body, message.raw, end)
        out.ends.append(message)
        if message.tag not in _TERMINAL or message.tag == READY:
            out.masked.append(False)
        else:
            out.masked.append(self._masked)
            self._statement_done()

    def _statement_done(self) -> None:
        self._masked = False
        self._plan = None
        self._warned = False

    def _can_stream(self, tag: int) -> bool:
        """Whether a message with ``tag``, begun now, can be forwarded before it is complete."""
        if tag not in _REWRITABLE:
            return True
        if tag == DATA_ROW and not self._copy:
            return self._row_plan().passthrough
        return False

    # ---- one backend message ----------------------------------------------------------------

    def _inspect(self, message: framing.Message) -> bytes | None:
        """Follow one backend message; return its replacement (b"" drops it), or None."""
        tag = message.tag
        if tag == DATA_ROW:
            plan = self._plan or self._row_plan()
            if plan.passthrough:
                return None
            new = mask_data_row(plan, message.body)
            if new is not None:
                self._masked = True
            return new
        if tag == COPY_DATA:
            return self._copy_data(message.body)
        if tag == ROW_DESCRIPTION:
            self._row_description(message.body)
        elif tag in (COMMAND_COMPLETE, EMPTY_QUERY, PORTAL_SUSPENDED):
            new = None
            if self._copy == _COPY_REFUSE:
                new = _copy_refused()
                self._masked = True
            self._copy = 0
            if tag == COMMAND_COMPLETE and bytes(message.body[:10]) in _FORGETTING:
                # DEALLOCATE name or DISCARD ALL in SQL: which statements went is not known
                # here, so forget every description; one that is still needed is described
                # again, and rows of one that is not fail closed.
                self._statements = {}
            if self._head(F_EXECUTE):
                self._requests.popleft()
            return new
        elif tag == COPY_DONE:
            return b"" if self._copy == _COPY_REFUSE else None
        elif tag == COPY_OUT:
            self._copy_out(message.body)
        elif tag == ERROR:
            self._error()
            new = _mask_fields(self.policy, tag, message.body)
            self._masked = self._masked or new is not None
            return new
        elif tag == NOTICE:
            new = _mask_fields(self.policy, tag, message.body)
            self._masked = self._masked or new is not None
            return new
        elif tag == NOTIFICATION:
            return _mask_notification(self.policy, message.body)
        elif tag == READY:
            self._ready(pgm.parse_ready_for_query(message.body))
        elif tag == PARSE_COMPLETE:
            request = self._pop(F_PARSE)
            if request is not None:
                closed, self._closed = self._closed, None
                same = closed is not None and closed[0] == request.name
                if same and closed is not None and closed[1].digest == request.digest:
                    self._statements[request.name] = closed[1]
                else:
                    self._statements[request.name] = _Statement(digest=request.digest)
        elif tag == BIND_COMPLETE:
            request = self._pop(F_BIND)
            if request is not None:
                # setdefault: a statement PREPAREd in SQL is bound without a Parse.
                statement = self._statements.setdefault(request.statement, _Statement())
                self._portals[request.name] = _Portal(statement, request.formats)
        elif tag == NO_DATA:
            self._described([])
        elif tag == CLOSE_COMPLETE:
            request = self._pop(F_CLOSE)
            if request is not None and request.kind == "S":
                dropped = self._statements.pop(request.name, None)
                self._closed = None if dropped is None else (request.name, dropped)
            elif request is not None:
                self._portals.pop(request.name, None)
        elif tag == FUNCTION_RESULT:
            return self._function_result(message.body)
        return None

    def _head(self, tag: int) -> bool:
        return bool(self._requests) and self._requests[0].tag == tag

    def _pop(self, tag: int) -> _Request | None:
        """The request this answer is for, when it is the expected one."""
        if self._head(tag):
            return self._requests.popleft()
        log.warning("masking: unexpected answer to %s", _name(tag))
        return None

    def _row_description(self, body: memoryview) -> None:
        columns = pgm.parse_row_description(body)
        if self._head(F_DESCRIBE):
            self._described(columns)
            return
        # A simple query (or a FETCH/EXECUTE in one): the formats here are the real ones.
        self._plan = plan_rows(self.policy, columns, [c.format_code for c in columns])

    def _described(self, columns: list[pgm.Column]) -> None:
        request = self._pop(F_DESCRIBE)
        if request is None:
            return
        if request.kind == "S":
            self._statements.setdefault(request.name, _Statement()).columns = columns
        else:
            portal = self._portals.get(request.name)
            if portal is not None:
                portal.described, portal.plan = columns, None

    def _row_plan(self) -> RowPlan:
        """The plan for the DataRows now arriving; computed once per statement."""
        if self._plan is not None:
            return self._plan
        plan = None
        if self._head(F_EXECUTE):
            portal = self._portals.get(self._requests[0].name)
            plan = None if portal is None else self._portal_plan(portal)
        if plan is None:
            if not self._warned:
                log.warning(
                    "masking: rows arrived for a result the agent has no description of; "
                    "every value of them is sent as NULL"
                )
                self._warned = True
            plan = FAIL_CLOSED
        self._plan = plan
        return plan

    def _portal_plan(self, portal: _Portal) -> RowPlan | None:
        if portal.plan is not None:
            return portal.plan
        if portal.described is not None:
            columns = portal.described
            formats: list[int] | None = [c.format_code for c in columns]
        elif portal.statement is not None and portal.statement.columns is not None:
            columns = portal.statement.columns
            formats = _spread(portal.formats, len(columns))
        else:
            return None
        if formats is None:
            return None
        portal.plan = plan_rows(self.policy, columns, formats)
        return portal.plan

    def _error(self) -> None:
        if self._copy == _COPY_REFUSE:
            self._masked = True  # rows were dropped before the target's own error
        self._copy = 0
        if self._requests and self._requests[0].tag in _EXTENDED:
            # The target skips the rest of the batch up to its Sync.
            while self._requests and self._requests[0].tag != F_SYNC:
                self._requests.popleft()

    def _ready(self, status: str) -> None:
        while self._requests:
            if self._requests.popleft().tag in (F_SYNC, F_QUERY, F_FUNCTION):
                break
        self._statement_done()
        self._copy = 0
        if status == "I":
            self._portals.clear()  # portals live until the end of their transaction

    def _copy_out(self, body: memoryview) -> None:
        overall = body[0] if len(body) else 1
        if overall != 0 or self.policy.columns:
            self._copy = _COPY_REFUSE  # refused: rows are dropped, the statement ends in an error
        elif self.policy.detectors:
            self._copy = _COPY_MASK

    def _copy_data(self, body: memoryview) -> bytes | None:
        if self._copy == _COPY_REFUSE:
            return b""
        if self._copy != _COPY_MASK:
            return None  # COPY FROM/BOTH data never comes this way; leave it
        raw = bytes(body)
        line, newline = (raw[:-1], b"\n") if raw.endswith(b"\n") else (raw, b"")
        masked = self.policy.detectors.mask(line.decode("utf-8", "surrogateescape"))
        if masked is None:
            return None
        self._masked = True
        new_body = masked.encode("utf-8", "surrogateescape") + newline
        return b"d" + _INT32.pack(len(new_body) + 4) + new_body

    def _function_result(self, body: memoryview) -> bytes | None:
        if len(body) >= 4 and _INT32.unpack_from(body, 0)[0] == -1:
            return None
        # The control plane refuses function calls; should one come through, fail closed.
        log.warning("masking: a fast-path function result is sent as NULL")
        self._masked = True
        return b"V\x00\x00\x00\x08" + _NULL


def _request(message: framing.Message) -> _Request | None:
    """The request a frontend message makes, for the messages the target answers."""
    tag = message.tag
    if tag in (F_QUERY, F_SYNC, F_FUNCTION, F_PARSE, F_EXECUTE, F_DESCRIBE, F_CLOSE, F_BIND):
        body = message.body
        if tag in (F_QUERY, F_SYNC, F_FUNCTION):
            return _Request(tag)
        if tag == F_PARSE:
            name, pos = _cstring(body, 0)
            digest = hashlib.blake2b(body[pos:], digest_size=16).digest()  # text and types
            return _Request(tag, name=name, digest=digest)
        if tag == F_EXECUTE:
            return _Request(tag, name=_cstring(body, 0)[0])
        if tag in (F_DESCRIBE, F_CLOSE):
            return _Request(tag, name=_cstring(body, 1)[0], kind=chr(body[0]) if body else "")
        portal, pos = _cstring(body, 0)
        statement, pos = _cstring(body, pos)
        return _Request(tag, name=portal, statement=statement, formats=_result_formats(body, pos))
    return None


def _cstring(body: memoryview, pos: int) -> tuple[str, int]:
    """A NUL-terminated name at ``pos``; names are short, so look at little of a long body."""
    for window in (128, len(body)):
        raw = bytes(body[pos : pos + window])
        end = raw.find(b"\0")
        if end >= 0:
            return raw[:end].decode("utf-8", "surrogateescape"), pos + end + 1
    raise framing.ProtocolError("malformed frontend message: missing NUL terminator")


def _result_formats(body: memoryview, pos: int) -> tuple[int, ...]:
    """Skip a Bind's parameter formats and values; return its result format codes."""
    try:
        (count,) = _INT16.unpack_from(body, pos)
        pos += 2 + 2 * count
        (count,) = _INT16.unpack_from(body, pos)
        pos += 2
        for _ in range(count):
            (length,) = _INT32.unpack_from(body, pos)
            pos += 4 + max(length, 0)
        (count,) = _INT16.unpack_from(body, pos)
        formats: tuple[int, ...] = struct.unpack_from(f"!{count}h", body, pos + 2)
    except struct.error:
        raise framing.ProtocolError("malformed Bind") from None
    return formats


def _name(tag: int) -> str:
    return {
        F_PARSE: "Parse",
        F_BIND: "Bind",
        F_DESCRIBE: "Describe",
        F_CLOSE: "Close",
        F_EXECUTE: "Execute",
    }.get(tag, chr(tag))

"""Parse and validate the declarative policy file (`gatehouse admin apply -f gatehouse.yaml`).

Admins edit this file by hand, so a refusal has to say *where* (``FILE:LINE``) and *what*
(a key path in human terms, e.g. ``connections[0] (pg-prod).target.port``), and it has to
list every problem at once rather than one per round trip. PyYAML's composed node tree
keeps the source marks; pydantic validates the plain data; each pydantic error ``loc`` is
mapped back to a node to name the line.

Secrets never appear in the file itself: a connection's ``secret`` values must be
``env:NAME`` or ``file:/absolute/path`` references, because the accepted file is kept in
the policy history.
"""

import gc
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from types import UnionType
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:  # libyaml's parser composes the same nodes, marks (lines) included, several times faster
    from yaml import CSafeLoader as _Composer
except ImportError:  # pragma: no cover  # PyYAML built without libyaml
    from yaml import SafeLoader as _Composer  # type: ignore[assignment]

__all__ = [
    "AccessRule",
    "AnyConnection",
    "Connection",
    "ConnectionType",
    "Guardrail",
    "HttpBasic",
    "HttpConnection",
    "HttpSecret",
    "HttpTarget",
    "HttpTls",
    "MaskingRule",
    "MysqlConnection",
    "MysqlTarget",
    "PolicyDocument",
    "PolicyError",
    "PostgresConnection",
    "PostgresTarget",
    "Review",
    "SecretRef",
    "ShellConnection",
    "ShellTarget",
    "SshConnection",
    "SshTarget",
    "Target",
    "format_ttl",
    "parse_policy",
    "to_json",
]

Loc = tuple[str | int, ...]

CONNECTION_TYPES: tuple[str, ...] = ("http", "mysql", "postgres", "shell", "ssh")
ConnectionType = Literal["postgres", "mysql", "ssh", "shell", "http"]

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SQL_KEYWORD_RE = re.compile(r"[A-Z]+")
_TTL_RE = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_TTL_UNITS: dict[str, int] = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")

# Refuse documents whose alias expansion would make validation explode (a "billion laughs").
_MAX_EXPANDED_NODES = 500_000
# The validation context flag set by parse_policy, which checks names and references itself
# (with line numbers) so the model validator need not repeat them.
_CHECKED_BY_PARSER = "gatehouse.policy.integrity_checked"
# Error type of every custom error raised here; its ctx carries the final message.
_ERROR_TYPE = "gatehouse_policy"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


def _problem(message: str, *at: str | int) -> PydanticCustomError:
    """A validation error whose text we control; `at` extends its loc (to name a line)."""
    return PydanticCustomError(_ERROR_TYPE, "{message}", {"message": message, "at": list(at)})


def _show(value: object, limit: int = 60) -> str:
    """repr() of a user value, cut short so one bad value cannot flood the error list."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- field types


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise _problem(
            f"invalid name {_show(value)}: use 1-63 characters from a-z, 0-9, '.', '_' and '-',"
            " starting with a letter or digit"
        )
    return value


def _check_secret_ref(value: object) -> str:
    """Only references are accepted: the file is stored in the policy history."""
    forms = "use env:NAME (an environment variable) or file:/absolute/path"
    if not isinstance(value, str):
        raise _problem(f"a secret must be a reference, not {_kind(value)}; {forms}")
    if value.startswith("env:"):
        if not _ENV_NAME_RE.fullmatch(value[4:]):
            raise _problem(
                "invalid environment variable name in env: reference;"
                " NAME must match [A-Za-z_][A-Za-z0-9_]*"
            )
        return value
    if value.startswith("file:"):
        if not value[5:].startswith("/") or "\x00" in value:
            raise _problem("a file: reference needs an absolute path, e.g. file:/etc/gatehouse/pw")
        return value
    # Never echo the value: it is probably the secret itself.
    raise _problem(
        f"literal secrets are not allowed (the policy file is kept in the policy history); {forms}"
    )


def _check_env_name(value: str) -> str:
    if not _ENV_NAME_RE.fullmatch(value):
        raise _problem(
            f"invalid environment variable name {_show(value)}; must match [A-Za-z_][A-Za-z0-9_]*"
        )
    return value


def _check_absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise _problem(f"must be an absolute path, got {_show(value)}")
    return value


def _check_base_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise _problem(f"invalid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _problem("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # Never echo: the URL carries credentials.
        raise _problem(
            "credentials in the URL are not allowed; put them under secret (authorization)"
        )
    return value


_METHOD_RE = re.compile(r"\*|[A-Z]+")


def _check_request_rule(value: str) -> str:
    method, _, path = value.partition(" ")
    if not _METHOD_RE.fullmatch(method) or not path.startswith("/") or " " in path:
        raise _problem(
            f"{_show(value)} is not a request rule; write METHOD /path/glob, e.g. "
            "'DELETE /**' or 'POST /admin/**' (`*` any method)"
        )
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _check_sql_keyword(value: str) -> str:
    if not _SQL_KEYWORD_RE.fullmatch(value):
        raise _problem(f"{_show(value)} is not a SQL command keyword (e.g. DROP, TRUNCATE)")
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise _problem(f"invalid regular expression {_show(value)}: {exc.msg}{where}") from None
    return value


def _parse_ttl(value: object) -> object:
    """Accept the duration forms admins write (90s, 30m, 1h, 1d); ints are too ambiguous."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        match = _TTL_RE.fullmatch(value.strip())
        if match:
            return timedelta(seconds=int(match.group(1)) * _TTL_UNITS[match.group(2)])
    raise _problem(f"invalid duration {_show(value)}; use a form like 90s, 30m, 1h, 8h or 1d")


def _check_ttl(value: timedelta) -> timedelta:
    if value <= timedelta(0) or value.microseconds:
        raise _problem("a duration must be a positive whole number of seconds")
    return value


def format_ttl(value: timedelta) -> str:
    """The inverse of the ttl parser: the largest unit that divides evenly (3600s -> "1h")."""
    total = int(value.total_seconds())
    for unit, seconds in _TTL_UNITS.items():
        if total % seconds == 0:
            return f"{total // seconds}{unit}"
    raise AssertionError("unreachable: every whole number of seconds divides by 1")


NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
Name = Annotated[str, AfterValidator(_check_name)]
# YAML has typed scalars, so an int field takes only ints (not "5432", not `true`).
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
SecretRef = Annotated[str, BeforeValidator(_check_secret_ref)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
AbsolutePath = Annotated[str, AfterValidator(_check_absolute_path)]
SqlKeyword = Annotated[str, BeforeValidator(_upper), AfterValidator(_check_sql_keyword)]
Regex = Annotated[str, AfterValidator(_check_regex)]
RequestRule = Annotated[str, AfterValidator(_check_request_rule)]
UnboundedStatement = Annotated[Literal["DELETE", "UPDATE"], BeforeValidator(_upper)]
Ttl = Annotated[
    timedelta,
    BeforeValidator(_parse_ttl),
    AfterValidator(_check_ttl),
    PlainSerializer(format_ttl, return_type=str, when_used="json"),
]


# --------------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostgresTarget(_Model):
    host: NonEmptyStr
    port: Port = 5432
    database: NonEmptyStr
    user: NonEmptyStr
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    sslrootcert: NonEmptyStr | None = None


class MysqlTarget(_Model):
    host: NonEmptyStr
    port: Port = 3306
    database: NonEmptyStr | None = None
    user: NonEmptyStr
    # TLS inside the MySQL handshake: "prefer" uses it when the target offers it.
    tls: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    tls_ca: NonEmptyStr | None = None
    local_infile: bool = False  # LOAD DATA LOCAL INFILE reads files of the client's host


class SshTarget(_Model):
    host: NonEmptyStr
    port: Port = 22
    user: NonEmptyStr
    known_hosts: NonEmptyStr  # pinned host key line(s); no trust-on-first-use


RUN_AS_AGENT = "agent"
"""`run_as: agent`: commands run as the agent's own user, who can read the agent's secrets."""
_ACCOUNT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def _check_account(value: str) -> str:
    if not _ACCOUNT_RE.fullmatch(value):
        raise _problem(
            f"run_as {_show(value)} is not an account name (letters, digits, '_', '.', '-'; "
            "at most 32 characters)"
        )
    if value == "root":
        raise _problem(
            "run_as: root can read every secret of the agent; name an unprivileged account"
        )
    return value


Account = Annotated[str, AfterValidator(_check_account)]


class ShellTarget(_Model):
    # The account commands run as (its uid, groups and home); `agent` for the agent's own.
    run_as: Account | None = None
    workdir: AbsolutePath | None = None
    env: dict[EnvName, str] = Field(default_factory=dict)
    timeout: Annotated[int, Strict(), Field(gt=0)] = 300  # seconds
    # The interpreter for a command given as one text (a native ssh client's); argv runs as is.
    shell: Annotated[list[NonEmptyStr], Field(min_length=1)] | None = None
    max_output: Annotated[int, Strict(), Field(gt=0)] = 64 * 1024 * 1024  # stdout + stderr bytes


_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


class HttpTls(_Model):
    ca_file: AbsolutePath | None = None  # the CA the target's certificate must chain to
    server_name: NonEmptyStr | None = None  # checked and sent as SNI, not the URL's


class HttpTarget(_Model):
    url: Annotated[str, AfterValidator(_check_base_url)]
    tls: HttpTls = Field(default_factory=HttpTls)
    headers: dict[NonEmptyStr, str] = Field(default_factory=dict)  # added to every request
    # Most bytes of a request body held to be recorded and decided before it goes on (413).
    max_body: Annotated[int, Strict(), Field(gt=0, le=1024 * 1024 * 1024)] = 16 * 1024 * 1024
    # Most bytes of a request body kept as text in its event (masked); 0: none.
    record_body: Annotated[int, Strict(), Field(ge=0)] = 64 * 1024

    @field_validator("headers")
    @classmethod
    def _no_credentials_in_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for header in value:
            if header.lower() in _CREDENTIAL_HEADERS:
                raise _problem(
                    f"header {header!r} carries credentials; put it under secret"
                    " (bearer, basic or headers) as an env:/file: reference",
                    header,
                )
        return value


class HttpBasic(_Model):
    user: NonEmptyStr
    password: SecretRef


class HttpSecret(_Model):
    """The credential the agent injects; the caller never sees it. One of the three forms."""

    bearer: SecretRef | None = None
    basic: HttpBasic | None = None
    headers: dict[NonEmptyStr, SecretRef] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        forms = [f for f in ("bearer", "basic") if getattr(self, f) is not None]
        if len(forms) > 1:
            raise _problem("give one of bearer or basic, not both")
        return self

    def flat(self) -> dict[str, str]:
        """As the agent receives it (ConnectionSpec.secret): `bearer`, `basic`, `header:NAME`;
        the basic user name, no secret, travels as `basic_user`."""
        out: dict[str, str] = {}
        if self.bearer is not None:
            out["bearer"] = self.bearer
        if self.basic is not None:
            out["basic"] = self.basic.password
            out["basic_user"] = self.basic.user
        out.update({f"header:{name}": ref for name, ref in self.headers.items()})
        return out


Target = PostgresTarget | MysqlTarget | SshTarget | ShellTarget | HttpTarget

_TARGET_MODELS: dict[str, type[_Model]] = {
    "postgres": PostgresTarget,
    "mysql": MysqlTarget,
    "ssh": SshTarget,
    "shell": ShellTarget,
    "http": HttpTarget,
}
_SECRET_KEYS: dict[str, frozenset[str]] = {
    "postgres": frozenset({"password"}),
    "mysql": frozenset({"password"}),
    "ssh": frozenset({"private_key", "password", "passphrase"}),
    "shell": frozenset(),
    "http": frozenset({"bearer", "basic", "headers"}),
}


class Connection(_Model):
    """A named target reached through an agent. Parsed documents hold the per-type
    subclasses below (PostgresConnection, ...), whose `target` is narrowed to one model."""

    name: Name
    type: ConnectionType
    agent: NonEmptyStr
    audit: Literal["strict", "async"] = "strict"
    target: Target
    secret: dict[str, SecretRef] = Field(default_factory=dict)
    guardrails: list[Name] = Field(default_factory=list)
    masking: list[Name] = Field(default_factory=list)

    @field_validator("secret")
    @classmethod
    def _secret_keys_fit_type(cls, value: object, info: ValidationInfo) -> object:
        kind = info.data.get("type")
        if kind not in _SECRET_KEYS or not isinstance(value, dict):
            return value  # `type` itself is reported
        allowed = _SECRET_KEYS[kind]
        unknown = sorted(key for key in value if key not in allowed)
        if unknown:
            expected = (
                f"expected one of: {', '.join(sorted(allowed))}"
                if allowed
                else "this type takes no secrets"
            )
            raise _problem(
                f"unknown secret {_show(unknown[0])} for a {kind} connection; {expected}",
                unknown[0],
            )
        return value

    @model_validator(mode="after")
    def _target_fits_type(self) -> Self:
        expected = _TARGET_MODELS[self.type]
        if not isinstance(self.target, expected):
            raise _problem(f"target does not fit type {self.type!r}", "target")
        return self


class PostgresConnection(Connection):
    type: Literal["postgres"]
    target: PostgresTarget


class MysqlConnection(Connection):
    type: Literal["mysql"]
    target: MysqlTarget


class SshConnection(Connection):
    type: Literal["ssh"]
    target: SshTarget


class ShellConnection(Connection):
    type: Literal["shell"]
    target: ShellTarget

    @model_validator(mode="after")
    def _runs_as_someone(self, info: ValidationInfo) -> Self:
        """A new policy must say whose account runs commands. Documents already stored are
        loaded as they are; the agent refuses their commands until run_as is set."""
        parsed = isinstance(info.context, Mapping) and info.context.get(_CHECKED_BY_PARSER)
        if parsed and self.target.run_as is None:
            raise _problem(
                "a shell connection needs run_as: the unprivileged account its commands run "
                "as, e.g. target: {run_as: gatehouse-ops}; `run_as: agent` runs them as the "
                "agent's own user, who can read the agent's credential and secrets",
                "target",
            )
        return self


class HttpConnection(Connection):
    type: Literal["http"]
    target: HttpTarget
    secret: HttpSecret = Field(default_factory=HttpSecret)  # type: ignore[assignment]


# `type` picks the model, so a bad target is reported against its own type only.
AnyConnection = Annotated[
    PostgresConnection | MysqlConnection | SshConnection | ShellConnection | HttpConnection,
    Field(discriminator="type"),
]


class Guardrail(_Model):
    name: Name
    deny_statements: list[SqlKeyword] = Field(default_factory=list)  # upper-cased
    # DELETE/UPDATE without WHERE
    deny_unbounded: list[UnboundedStatement] = Field(default_factory=list)
    deny_patterns: list[Regex] = Field(default_factory=list)  # Python regexes
    deny_commands: list[NonEmptyStr] = Field(default_factory=list)  # globs on the joined argv
    # HTTP: "METHOD /path/glob" (`*` one segment, `**` any, method `*` any); see requests.py
    deny_requests: list[RequestRule] = Field(default_factory=list)
    allow_requests: list[RequestRule] = Field(default_factory=list)


class MaskingRule(_Model):
    name: Name
    columns: list[NonEmptyStr] = Field(default_factory=list)
    detectors: list[Literal["email", "credit_card", "phone", "national_id", "secret"]] = Field(
        default_factory=list
    )


class Review(_Model):
    groups: Annotated[list[NonEmptyStr], Field(min_length=1)]
    ttl: Ttl


class AccessRule(_Model):
    name: Name
    groups: Annotated[list[NonEmptyStr], Field(min_length=1)]
    connections: Annotated[list[NonEmptyStr], Field(min_length=1)]  # globs on connection names
    modes: Annotated[list[Literal["exec", "connect"]], Field(min_length=1)]
    review: Review | None = None


_SECTIONS: dict[str, str] = {
    "connections": "connection",
    "guardrails": "guardrail",
    "masking": "masking rule",
    "access": "access rule",
}


class PolicyDocument(_Model):
    connections: list[AnyConnection] = Field(default_factory=list)
    guardrails: list[Guardrail] = Field(default_factory=list)
    masking: list[MaskingRule] = Field(default_factory=list)
    access: list[AccessRule] = Field(default_factory=list)

    @field_validator(*_SECTIONS, mode="before")
    @classmethod
    def _empty_section_is_empty_list(cls, value: object) -> object:
        return [] if value is None else value  # `guardrails:` with nothing under it

    @model_validator(mode="after")
    def _names_and_references(self, info: ValidationInfo) -> Self:
        """Unique names and defined references, also for documents built in code."""
        if isinstance(info.context, Mapping) and info.context.get(_CHECKED_BY_PARSER):
            return self
        data = self.model_dump()
        found = _integrity_problems(data)
        if found:
            raise _problem(
                "; ".join(
                    f"{_describe(loc, data)}: {message}"
                    + (f" (first defined at {_describe(first, data)})" if first else "")
                    for loc, message, first in found
                )
            )
        return self

    def connection(self, name: str) -> Connection | None:
        return next((c for c in self.connections if c.name == name), None)

    def guardrail(self, name: str) -> Guardrail | None:
        return next((g for g in self.guardrails if g.name == name), None)

    def masking_rule(self, name: str) -> MaskingRule | None:
        return next((m for m in self.masking if m.name == name), None)


def to_json(doc: PolicyDocument) -> dict[str, Any]:
    """A JSON-able dict (ttl as "1h") to store and push; `PolicyDocument.model_validate`
    reads it back."""
    return doc.model_dump(mode="json")


# --------------------------------------------------------------------------------- errors


class PolicyError(ValueError):
    """The file was refused; `problems` lists every problem found (not just the first)."""

    problems: list[str]  # each "FILE:LINE: message", sorted by line

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _integrity_problems(data: object) -> list[tuple[Loc, str, Loc | None]]:
    """Duplicate names and undefined references, on plain data of any shape.

    Runs on the raw YAML data too, so these are reported even when other parts of the
    file fail validation. Returns (loc, message, loc of the first definition or None).
    """
    if not isinstance(data, dict):
        return []
    found: list[tuple[Loc, str, Loc | None]] = []
    defined: dict[str, dict[str, int]] = {}
    for section, noun in _SECTIONS.items():
        names = defined.setdefault(section, {})
        items = data.get(section)
        if not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            if name in names:
                found.append(
                    (
                        (section, index, "name"),
                        f"duplicate {noun} name {_show(name)}",
                        (section, names[name], "name"),
                    )
                )
            else:
                names[name] = index
    connections = data.get("connections")
    for index, item in enumerate(connections if isinstance(connections, list) else []):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        who = f"connection {_show(name)}" if isinstance(name, str) else "this connection"
        for field in ("guardrails", "masking"):
            refs = item.get(field)
            noun = _SECTIONS[field]
            for ref_index, ref in enumerate(refs if isinstance(refs, list) else []):
                if isinstance(ref, str) and ref not in defined[field]:
                    known = ", ".join(sorted(defined[field])) or "none"
                    found.append(
                        (
                            ("connections", index, field, ref_index),
                            f"{who} refers to undefined {noun} {_show(ref)}"
                            f" (defined {noun}s: {known})",
                            None,
                        )
                    )
    return found


def _describe(loc: Loc, data: object) -> str:
    """`connections[0] (pg-prod).target.port`: the path an admin can find in the file."""
    out = ""
    current: object = data
    for elem in loc:
        if isinstance(elem, int):
            out += f"[{elem}]"
            current = current[elem] if isinstance(current, list) and elem < len(current) else None
            label = current.get("name") if isinstance(current, dict) else None
            if isinstance(label, str) and label:
                out += f" ({_show(label)[1:-1]})"
        else:
            key = str(elem)
            out += (("." if out else "") + key) if _PLAIN_KEY_RE.fullmatch(key) else f"[{key!r}]"
            current = current.get(elem) if isinstance(current, dict) else None
    return out or "the top level"


def _node_at(root: Node, loc: Loc) -> tuple[Node, Node | None, int]:
    """The deepest node along `loc`, the key node of the last step taken, and how many
    steps of `loc` were found (a missing key stops at the mapping that lacks it)."""
    node, key_node, depth = root, None, 0
    for elem in loc:
        step: tuple[Node | None, Node] | None = None
        if isinstance(node, MappingNode):
            for key, value in node.value:  # the last one wins, as when constructing
                if isinstance(key, ScalarNode) and key.value == str(elem):
                    step = (key, value)
        elif isinstance(node, SequenceNode) and isinstance(elem, int) and elem < len(node.value):
            step = (None, node.value[elem])
        if step is None:
            break
        key_node, node = step
        depth += 1
    return node, key_node, depth


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _value_line(root: Node, loc: Loc) -> int:
    return _line(_node_at(root, loc)[0])


def _key_line(root: Node, loc: Loc) -> int:
    node, key_node, depth = _node_at(root, loc)
    return _line(key_node) if key_node is not None and depth == len(loc) else _line(node)


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _as_model(tp: Any) -> type[BaseModel] | None:
    """`tp` as a model class, also through `Model | None`."""
    tp = _unwrap(tp)
    if get_origin(tp) in (Union, UnionType):
        members = [arg for arg in get_args(tp) if arg is not type(None)]
        tp = _unwrap(members[0]) if len(members) == 1 else None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _model_at(raw_loc: Loc) -> type[BaseModel] | None:
    """The model that validated the value at pydantic's `raw_loc` (which has union tags)."""
    tp: Any = PolicyDocument
    for elem in raw_loc:
        tp = _unwrap(tp)
        model = _as_model(tp)
        if model is not None:
            field = model.model_fields.get(str(elem))
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            tagged = [m for m in map(_unwrap, get_args(tp)) if _tag_of(m) == elem]
            if not tagged:
                return None
            tp = tagged[0]
    return _as_model(tp)


def _tag_of(model: Any) -> str | None:
    if isinstance(model, type) and issubclass(model, BaseModel) and "type" in model.model_fields:
        values = get_args(model.model_fields["type"].annotation)
        if len(values) == 1 and isinstance(values[0], str):
            return values[0]
    return None


def _strip_tags(raw_loc: Loc) -> Loc:
    """Drop the union tag pydantic puts after `connections[i]`: it is not in the file."""
    if (
        len(raw_loc) >= 3
        and raw_loc[0] == "connections"
        and isinstance(raw_loc[1], int)
        and raw_loc[2] in CONNECTION_TYPES
    ):
        return raw_loc[:2] + raw_loc[3:]
    return raw_loc


_SCALAR_NAMES = {
    "int_type": "integer",
    "int_parsing": "integer",
    "int_from_float": "integer",
    "string_type": "string",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "float_type": "number",
    "float_parsing": "number",
}
_MAPPING_TYPES = {"dict_type", "model_type", "model_attributes_type"}
_SECRETISH_KEYS = {"password", "passphrase", "private_key", "token", "authorization", "secret"}


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _convert(error: ErrorDetails, root: Node, data: object) -> tuple[int, str]:
    """One pydantic error -> (line, message in the file's own terms)."""
    raw_loc: Loc = tuple(error["loc"])
    loc = _strip_tags(raw_loc)
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value = error.get("input")

    if loc and loc[-1] == "[key]":  # the error is about a mapping key, not its value
        loc = loc[:-1]
        line = _key_line(root, loc)
        detail = ctx["message"] if kind == _ERROR_TYPE else _lower_first(error["msg"])
        return line, f"{_describe(loc, data)}: invalid key: {detail}"
    if kind == _ERROR_TYPE:
        full = loc + tuple(ctx.get("at") or ())
        return _value_line(root, full), f"{_describe(full, data)}: {ctx['message']}"
    if kind in ("extra_forbidden", "invalid_key"):
        model = _model_at(raw_loc[:-1])
        where = f"in {_describe(loc[:-1], data)}" if loc[:-1] else "at the top level"
        message = f"unknown key {_show(loc[-1])} {where}"
        if model is not None:
            message += f"; expected one of: {', '.join(sorted(model.model_fields))}"
        if str(loc[-1]).lower() in _SECRETISH_KEYS:
            message += "; secrets belong under 'secret' as env:NAME or file:/path"
        return _key_line(root, loc), message
    if kind == "missing":
        parent = _describe(loc[:-1], data)
        return _value_line(root, loc[:-1]), f"{parent}: missing required key {_show(loc[-1])}"
    if kind == "union_tag_not_found":
        return _value_line(root, loc), (
            f"{_describe(loc, data)}: missing required key 'type'"
            f" (one of: {', '.join(CONNECTION_TYPES)})"
        )
    if kind == "union_tag_invalid":
        at = (*loc, "type")
        return _value_line(root, at), (
            f"{_describe(at, data)}: unknown type {_show(ctx.get('tag'))};"
            f" expected one of: {', '.join(CONNECTION_TYPES)}"
        )

    path = _describe(loc, data)
    if kind in _SCALAR_NAMES:
        message = f"value is not a valid {_SCALAR_NAMES[kind]}"
    elif kind in _MAPPING_TYPES:
        message = f"expected a mapping, got {_kind(value)}"
    elif kind == "list_type":
        message = f"expected a list, got {_kind(value)}"
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        message = f"invalid value {_show(value)}; expected one of: {', '.join(choices)}"
    elif kind in ("too_short", "string_too_short"):
        message = "must not be empty"
    elif kind == "greater_than_equal":
        message = f"must be at least {ctx.get('ge')}"
    elif kind == "less_than_equal":
        message = f"must be at most {ctx.get('le')}"
    elif kind == "greater_than":
        message = f"must be greater than {ctx.get('gt')}"
    else:
        message = _lower_first(error["msg"])
    return _value_line(root, loc), f"{path}: {message}"


# -------------------------------------------------------------------------------- parsing


def _yaml_error(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return line, f"invalid YAML: {message}"
    position = getattr(exc, "position", None)
    if not isinstance(position, int):
        line = 1
    elif getattr(exc, "encoding", "unicode") == "unicode":  # PyYAML's reader: characters
        line = text.count("\n", 0, position) + 1
    else:  # libyaml's: bytes of the UTF-8 it was given
        line = text.encode("utf-8", "surrogatepass").count(b"\n", 0, position) + 1
    return line, f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"


def _walk(root: Node, visit: Callable[[Node, Loc], None]) -> None:
    """Visit each node once (aliases share nodes), iteratively: no recursion limit."""
    seen: set[int] = set()
    stack: list[tuple[Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        visit(node, loc)
        if isinstance(node, MappingNode):
            for key, value in node.value:
                is_merge = key.tag == _MERGE_TAG
                sub = loc if is_merge or not isinstance(key, ScalarNode) else (*loc, key.value)
                stack.append((value, sub))
        elif isinstance(node, SequenceNode):
            stack.extend((item, (*loc, index)) for index, item in enumerate(node.value))


def _duplicate_keys(root: Node) -> list[tuple[Loc, str, int, int]]:
    """PyYAML keeps the last of two equal keys silently; find them in the node tree.
    Returns (mapping loc, key, line of the repeat, line of the first)."""
    found: list[tuple[Loc, str, int, int]] = []

    def visit(node: Node, loc: Loc) -> None:
        if not isinstance(node, MappingNode):
            return
        first: dict[tuple[str, str], int] = {}
        for key, _value in node.value:
            if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:
                continue  # explicit keys override merged ones: that is not a duplicate
            ident = (key.tag, key.value)
            if ident in first:
                found.append((loc, key.value, _line(key), first[ident]))
            else:
                first[ident] = _line(key)

    _walk(root, visit)
    return found


def _too_large(root: Node) -> bool:
    """Count nodes as validation would see them (aliases expanded), stopping at the cap."""
    count = 0
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > _MAX_EXPANDED_NODES:
            return True
        if isinstance(node, MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    return False


@contextmanager
def _cycle_collection_paused() -> Iterator[None]:
    """Parsing a big file allocates hundreds of thousands of objects in a burst (nodes, marks,
    data, models), which sets off collections of the whole heap over and over: in a control
    plane holding thousands of agents that was most of the parse. The few cycles made here
    are collected once the collector runs again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_policy(text: str, filename: str = "gatehouse.yaml") -> PolicyDocument:
    """Turn the policy file's text into a validated document, or raise PolicyError that
    lists every problem as ``FILE:LINE: message``, sorted by line."""
    with _cycle_collection_paused():
        return _parse_policy(text, filename)


def _parse_policy(text: str, filename: str) -> PolicyDocument:
    def refuse(found: list[tuple[int, str]]) -> PolicyError:
        unique = list(dict.fromkeys(found))
        unique.sort(key=lambda item: item[0])
        return PolicyError([f"{filename}:{line}: {message}" for line, message in unique])

    try:
        root = yaml.compose(text, Loader=_Composer)
    except yaml.YAMLError as exc:
        raise refuse([_yaml_error(exc, text)]) from None
    except UnicodeEncodeError as exc:  # a lone surrogate: libyaml reads UTF-8 only
        line = text.count("\n", 0, exc.start) + 1
        bad = f"#x{ord(text[exc.start]):04x}"
        raise refuse([(line, f"invalid YAML: unacceptable character {bad}")]) from None
    except RecursionError:
        raise refuse([(1, "invalid YAML: nested too deeply")]) from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):
        return PolicyDocument()
    if not isinstance(root, MappingNode):
        got = "a list" if isinstance(root, SequenceNode) else "a single value"
        raise refuse(
            [
                (
                    _line(root),
                    "the top level must be a mapping with keys "
                    f"{', '.join(sorted(PolicyDocument.model_fields))}; got {got}",
                )
            ]
        )
    if _too_large(root):
        raise refuse(
            [
                (
                    1,
                    f"the document expands through aliases to over {_MAX_EXPANDED_NODES} values"
                    " (recursive or exponential aliases are not allowed)",
                )
            ]
        )

    duplicates = _duplicate_keys(root)  # before constructing: that flattens merge keys
    try:
        data: object = yaml.SafeLoader("").construct_document(root)
    except yaml.YAMLError as exc:
        raise refuse([_yaml_error(exc, text)]) from None
    except RecursionError:
        raise refuse([(1, "invalid YAML: nested too deeply")]) from None

    found: list[tuple[int, str]] = []
    for loc, key, line, first_line in duplicates:
        where = f"in {_describe(loc, data)}" if loc else "at the top level"
        found.append((line, f"duplicate key {_show(key)} {where} (first on line {first_line})"))
    for loc, message, first in _integrity_problems(data):
        origin = f" (first defined on line {_value_line(root, first)})" if first else ""
        found.append((_value_line(root, loc), f"{_describe(loc, data)}: {message}{origin}"))

    document: PolicyDocument | None = None
    try:
        document = PolicyDocument.model_validate(data, context={_CHECKED_BY_PARSER: True})
    except ValidationError as exc:
        found.extend(_convert(error, root, data) for error in exc.errors())
    except RecursionError:
        found.append((1, "the document is nested too deeply"))

    if found or document is None:
        raise refuse(found or [(1, "the policy was refused")])
    return document

"""Settings read at the edge: flags, then GATEHOUSE_* variables, then a config file, then defaults.

A long-running process (`controlplane serve`, `agent run`) is described by one frozen dataclass
(controlplane/settings.py, agent/settings.py). Each of its fields is a key: `grpc_listen` in the
file, `--grpc-listen` on the command line, `GATEHOUSE_GRPC_LISTEN` in the environment. A field
marked secret also takes `KEY_file` / `--key-file` / `GATEHOUSE_KEY_FILE`, naming a file that
holds the value, so a password never sits in a unit file, a manifest or `ps`.

Every value is checked here, once, and an error names the key and where it came from
(`gatehouse.toml:7`, `GATEHOUSE_CHECKPOINT_EVERY`, `--grpc-listen`): nothing deeper reads the
environment, so what a process runs with is what this module built.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cli.parser import Opt

PREFIX = "GATEHOUSE_"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing, unknown or malformed; the message names the key and its source."""


@dataclasses.dataclass(frozen=True)
class Raw:
    """One value as given, before conversion, and where it was given."""

    value: object
    source: str


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    secret: bool = False,
    key: str | None = None,
    env: str | None = None,
    flags: tuple[str, ...] = (),
    parse: Callable[[str], Any] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A settings field: its help text, whether a `_file` variant exists, its key when other
    than the field's name, an environment name other than GATEHOUSE_KEY, flag spellings other
    than --key, and a parser for its text form."""
    metadata = {
        "help": help,
        "secret": secret,
        "key": key,
        "env": env,
        "flags": flags,
        "parse": parse,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def key_name(field: dataclasses.Field[Any]) -> str:
    """The name in the file (and, upper-cased or dashed, in the environment and on flags)."""
    return str(field.metadata.get("key") or field.name)


def env_name(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("env") or PREFIX + key_name(field).upper())


def flag_name(field: dataclasses.Field[Any]) -> str:
    flags: tuple[str, ...] = field.metadata.get("flags") or ()
    return flags[0] if flags else "--" + key_name(field).replace("_", "-")


def keys(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init]


# ---- the config file ---------------------------------------------------------------------


def read_config_file(path: Path) -> dict[str, Raw]:
    """The file's top-level keys with `file:line` sources; TOML or YAML by extension."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the config file {path} is over {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the config file {path} is not UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return _toml(path, text)
    if suffix in (".yaml", ".yml"):
        return _yaml(path, text)
    raise ConfigError(f"the config file {path} must end in .toml, .yaml or .yml")


def _toml(path: Path, text: str) -> dict[str, Raw]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    lines = text.splitlines()
    out: dict[str, Raw] = {}
    for key, value in document.items():
        pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=""")
        line = next((n for n, t in enumerate(lines, 1) if pattern.match(t)), None)
        out[key] = Raw(value, f"{path}:{line}" if line else str(path))
    return out


def _yaml(path: Path, text: str) -> dict[str, Raw]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode) or not isinstance(document, dict):
        raise ConfigError(f"{path}: the config file must be a mapping of key: value")
    lines: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        line = key.start_mark.line + 1
        if str(key.value) in lines:  # PyYAML would keep the last one silently
            raise ConfigError(
                f"{path}:{line}: key {key.value!r} is given again (first on line "
                f"{lines[str(key.value)]})"
            )
        lines[str(key.value)] = line
    return {
        str(key): Raw(value, f"{path}:{lines.get(str(key), '?')}")
        for key, value in document.items()
    }


# ---- layering ----------------------------------------------------------------------------


def load(
    cls: type[T],
    *,
    flags: Mapping[str, object | None],
    env: Mapping[str, str],
    config_file: Path | None = None,
) -> T:
    """The settings object: for each key the flag, else the environment, else the file, else
    the default. Unknown file keys, two spellings of one key in one place, and values of the
    wrong kind are refused with the key and its source named."""
    fields = keys(cls)
    known = {key_name(f) for f in fields}
    known |= {key_name(f) + "_file" for f in fields if f.metadata["secret"]}
    from_file = read_config_file(config_file) if config_file is not None else {}
    for key, given in from_file.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{given.source}: unknown key {key!r}{hint}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in fields:
        raw = _pick(field, flags, env, from_file)
        if raw is not None:
            values[field.name] = convert(field, hints[field.name], raw)
    try:
        return cls(**values)
    except TypeError as exc:  # a required key with no value anywhere
        missing = [f for f in fields if f.name not in values and _required(f)]
        if missing:
            field = missing[0]
            raise ConfigError(
                f"{key_name(field)} is required: give {flag_name(field)}, {env_name(field)} "
                f"or `{key_name(field)}` in the config file"
            ) from None
        raise ConfigError(str(exc)) from None


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _pick(
    field: dataclasses.Field[Any],
    flags: Mapping[str, object | None],
    env: Mapping[str, str],
    from_file: Mapping[str, Raw],
) -> Raw | None:
    """The highest layer that gives this key, reading a `_file` variant's file here."""
    secret = bool(field.metadata["secret"])
    name, env_key, flag = key_name(field), env_name(field), flag_name(field)
    layers: list[tuple[Raw | None, Raw | None]] = []
    direct = flags.get(name)
    via = flags.get(name + "_file") if secret else None
    layers.append(
        (
            Raw(direct, flag) if direct is not None else None,
            Raw(via, flag + "-file") if via is not None else None,
        )
    )
    direct_env = env.get(env_key, "")
    via_env = env.get(env_key + "_FILE", "") if secret else ""
    layers.append(
        (
            Raw(direct_env, env_key) if direct_env.strip() else None,
            Raw(via_env, env_key + "_FILE") if via_env.strip() else None,
        )
    )
    layers.append((from_file.get(name), from_file.get(name + "_file") if secret else None))
    for value, indirect in layers:
        if value is not None and indirect is not None:
            raise ConfigError(
                f"{name} is given twice, by {value.source} and by {indirect.source}: keep one"
            )
        if value is not None:
            return value
        if indirect is not None:
            return Raw(_read_secret(indirect), indirect.source)
    return None


def _read_secret(raw: Raw) -> str:
    if not isinstance(raw.value, str | Path):
        raise ConfigError(f"{raw.source}: must be a file path")
    path = Path(raw.value).expanduser()
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{raw.source}: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"{raw.source}: {path} is over {MAX_SECRET_BYTES} bytes")
    try:
        value = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{raw.source}: {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{raw.source}: {path} is empty")
    return value


# ---- conversion --------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def convert(field: dataclasses.Field[Any], hint: Any, raw: Raw) -> Any:
    """The typed value of one key; ConfigError naming the key and its source."""
    try:
        return _convert(field, hint, raw.value)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key_name(field)} ({raw.source}): {exc}") from None


def _convert(field: dataclasses.Field[Any], hint: Any, value: object) -> Any:
    parse: Callable[[str], Any] | None = field.metadata.get("parse")
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
        origin = typing.get_origin(hint)
    if optional and isinstance(value, str) and not value.strip():
        return None
    if parse is not None:
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"must be text, not {_kind(value)}")
        return parse(str(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"must be true or false, not {_shown(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,18}\s*", value):
            return int(value)
        raise ValueError(f"must be a whole number, not {_shown(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"must be a number, not {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"must be text, not {_kind(value)}")
    if hint is Path:
        if isinstance(value, str | Path) and str(value).strip():
            return Path(value).expanduser()
        raise ValueError(f"must be a file path, not {_kind(value)}")
    if origin is tuple:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"must be a list of text or comma-separated text, not {_kind(value)}")
    raise TypeError(f"settings field {field.name} has a type this loader cannot read: {hint}")


def _kind(value: object) -> str:
    return {dict: "a table", list: "a list", bool: "true/false"}.get(type(value), _shown(value))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- the command line --------------------------------------------------------------------


def options(cls: type[Any]) -> tuple[Opt, ...]:
    """`--config` and one option per key of `cls` (a `--key-file` too for a secret), for
    cli.commands. Each gives its text as is, or None: `load` converts it and layers it."""
    hints = typing.get_type_hints(cls)
    made = [
        Opt(
            ("--config",),
            "A settings file (.toml, .yaml): any key below, by its name (grpc_listen = ...). "
            "Flags win over GATEHOUSE_* variables, which win over the file.",
            type=Path,
            metavar="FILE",
            env=PREFIX + "CONFIG",
        )
    ]
    for field in keys(cls):
        flags: tuple[str, ...] = field.metadata.get("flags") or (flag_name(field),)
        made.append(
            Opt(
                flags,
                f"{field.metadata['help']} (env {env_name(field)})",
                dest=key_name(field),
                metavar="VALUE",
                negatable=_is_bool(hints[field.name]),
                shown_default=_default_text(field),
            )
        )
        if field.metadata["secret"]:
            made.append(
                Opt(
                    (flag_name(field) + "-file",),
                    f"A file holding {flag_name(field)} (env {env_name(field)}_FILE)",
                    dest=key_name(field) + "_file",
                    metavar="FILE",
                )
            )
    return tuple(made)


def settings_from(cls: type[T], given: dict[str, Any]) -> T:
    """The settings object from a command's options (`options(cls)`), the environment and the
    --config file; a ConfigError is a usage error naming the key and its source."""
    from cli.errors import USAGE, CliError

    flags = dict(given)
    config = flags.pop("config")
    try:
        return load(cls, flags=flags, env=os.environ, config_file=config)
    except ConfigError as exc:
        raise CliError(str(exc), USAGE) from None


def _is_bool(hint: Any) -> bool:
    return hint is bool or (
        typing.get_origin(hint) in (typing.Union, types.UnionType) and bool in typing.get_args(hint)
    )


def _default_text(field: dataclasses.Field[Any]) -> str | None:
    if field.default is dataclasses.MISSING or field.default in (None, ""):
        return None
    value = field.default
    if isinstance(value, timedelta):
        return f"{int(value.total_seconds())}s"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) or None
    return str(value)

"""Profiles: which control plane (address, CA) and which stored login a command uses.

``gatehouse login --controlplane HOST:PORT [--ca-file F] [--profile NAME]`` writes a profile to
``$XDG_CONFIG_HOME/gatehouse/profiles.toml`` (0600, replaced atomically), so later commands need
neither the address nor the CA::

    current = "gw.example.com"

    [profiles."gw.example.com"]
    controlplane = "gw.example.com:8443"
    ca_file = "/home/me/.config/gatehouse/ca/gw.example.com.pem"   # a copy taken at login
    issuer = "https://idp.example"
    client_id = "gatehouse-cli"

Each setting is taken from the first of: flag, environment (GATEHOUSE_CONTROLPLANE,
GATEHOUSE_CA_FILE, GATEHOUSE_TOKEN), profile, built-in default (127.0.0.1:8443, system trust).
The profile is: ``--profile``/GATEHOUSE_PROFILE, else the one whose address an explicit address
names, else the last login's (``current``), else ``default``. A profile's CA and login are only
used for the profile's own address: an address that no profile names gets no other profile's
login (nor CA). The file is refused when others may write it (they could redirect the login).

Standard library only, and ``tomllib`` only once a profile file exists: ``gatehouse exec`` reads
this on every run (so its records are NamedTuples and a plain class: a dataclass costs ~0.4 ms
to define).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import NamedTuple

from cli import rpc
from cli.errors import USAGE, CliError
from wire.atomicfile import write_atomic

__all__ = [
    "DEFAULT_CONTROLPLANE",
    "DEFAULT_PROFILE",
    "Profile",
    "Profiles",
    "Target",
    "ca_copy_path",
    "check_name",
    "config_dir",
    "forget",
    "name_for",
    "profiles_path",
    "read_ca",
    "remember",
    "resolve",
    "select",
    "selected",
    "token_path",
    "write_private",
]

DEFAULT_CONTROLPLANE = rpc.DEFAULT_CONTROLPLANE
DEFAULT_PORT = "8443"
DEFAULT_PROFILE = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/gatehouse`` (``~/.config/gatehouse``): tokens, profiles, CA copies."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "gatehouse"


def profiles_path() -> Path:
    return config_dir() / "profiles.toml"


def check_name(name: str) -> str:
    """Profile names become file names: letters, digits, ``.``, ``_``, ``-`` only."""
    if not _NAME.fullmatch(name) or name in {".", ".."}:
        raise CliError(
            f"{name!r} is not a profile name: use letters, digits, '.', '_' and '-' (max 63)",
            USAGE,
        )
    return name


def token_path(name: str) -> Path:
    """Where a profile's login lives; ``default`` keeps the historical ``tokens.json``."""
    check_name(name)
    return config_dir() / ("tokens.json" if name == DEFAULT_PROFILE else f"tokens-{name}.json")


def ca_copy_path(name: str) -> Path:
    return config_dir() / "ca" / f"{check_name(name)}.pem"


def name_for(address: str) -> str:
    """A profile name for an address: its host, with the port when it is not 8443."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or address
    name = host if port in ("", DEFAULT_PORT) else f"{host}-{port}"
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:60]
    return check_name(name if name[:1].isalnum() else f"h{name}")


class Profile(NamedTuple):
    """One control plane: where it is, which CA vouches for it, which provider logs in."""

    name: str
    controlplane: str
    ca_file: str | None = None
    issuer: str | None = None
    client_id: str | None = None


class Profiles:
    """The whole profile file: every profile, and which one the last login chose."""

    def __init__(
        self, current: str | None = None, entries: dict[str, Profile] | None = None
    ) -> None:
        self.current = current
        self.entries: dict[str, Profile] = entries if entries is not None else {}

    @classmethod
    def load(cls) -> Profiles:
        path = profiles_path()
        try:
            with path.open(encoding="utf-8") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                text = handle.read()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc}") from None
        if mode & 0o022:
            # Whoever can write it can send this user's login to a control plane of theirs.
            raise CliError(f"{path} is writable by others: `chmod 600 {path}`, then check it")
        import tomllib

        try:
            document = tomllib.loads(text)
            entries = {
                check_name(name): Profile(name=name, **_fields(values))
                for name, values in dict(document.get("profiles", {})).items()
            }
            current = document.get("current")
            if current is not None and not isinstance(current, str):
                raise ValueError("current must be a string")
        except (ValueError, TypeError, CliError) as exc:
            raise CliError(
                f"cannot read the profiles in {path} ({exc}): fix or remove it"
            ) from None
        return cls(current=current, entries=entries)

    def save(self) -> None:
        lines = []
        if self.current is not None:
            lines += [f"current = {_quote(self.current)}", ""]
        for name in sorted(self.entries):
            profile = self.entries[name]
            lines.append(f"[profiles.{_quote(name)}]")
            for key in ("controlplane", "ca_file", "issuer", "client_id"):
                value = getattr(profile, key)
                if value is not None:
                    lines.append(f"{key} = {_quote(value)}")
            lines.append("")
        write_private(profiles_path(), "\n".join(lines))

    def matching(self, address: str) -> Profile | None:
        """The profile for this address: the current one first when several name it."""
        current = self.entries.get(self.current or "")
        if current is not None and current.controlplane == address:
            return current
        for name in sorted(self.entries):
            if self.entries[name].controlplane == address:
                return self.entries[name]
        return None


def _fields(values: object) -> dict[str, str]:
    if not isinstance(values, dict):
        raise ValueError("each profile must be a table")
    known = {"controlplane", "ca_file", "issuer", "client_id"}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    if not isinstance(values.get("controlplane"), str):
        raise ValueError("each profile needs a controlplane address")
    for key, value in values.items():
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
    return dict(values)


def _quote(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset TOML reads)."""
    return json.dumps(value, ensure_ascii=False)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as 0600 (directory 0700), atomically, whatever the umask."""
    if path.parent.parent == config_dir():  # ca/: the configuration directory is private too
        config_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"), 0o600)


class Target(NamedTuple):
    """What one command talks to: the address, the CA to trust, and whose login to use."""

    address: str
    ca_file: str | None
    profile: str
    #: Where the address came from: "flag" (or its environment variable), "profile", "default".
    source: str


#: This command's choice (one command, one target), kept under the configuration directory
#: and the variables it was made with: a process whose environment changed (tests, embedding
#: code) resolves again rather than read a choice made for another environment.
_chosen: dict[tuple[object, ...], Target] = {}


def _context() -> tuple[object, ...]:
    names = ("GATEHOUSE_CONTROLPLANE", "GATEHOUSE_CA_FILE", "GATEHOUSE_PROFILE")
    return (config_dir(), *(os.environ.get(name) for name in names))


def resolve(
    address: str | None = None, ca_file: str | None = None, profile: str | None = None
) -> Target:
    """Pick the control plane, CA and profile for this command (and remember the choice).

    ``address``/``ca_file``/``profile`` are the flags; their environment variables are read
    here too, so callers whose option parser already folded the variable in get the same.
    """
    address = address or os.environ.get("GATEHOUSE_CONTROLPLANE") or None
    ca_file = ca_file or os.environ.get("GATEHOUSE_CA_FILE") or None
    named = profile or os.environ.get("GATEHOUSE_PROFILE") or None
    profiles = Profiles.load()
    chosen: Profile | None
    if named is not None:
        check_name(named)
        chosen = profiles.entries.get(named)
        if chosen is None and address is None:
            raise CliError(
                f"no profile {named!r}: run `gatehouse login --controlplane HOST:PORT "
                f"--profile {named}`",
                USAGE,
            )
        if chosen is not None and address is not None and address != chosen.controlplane:
            # Its login (and CA) are for its own control plane only: say so, send nothing.
            raise CliError(
                f"profile {named!r} is for {chosen.controlplane}, not {address}: "
                "drop --controlplane/GATEHOUSE_CONTROLPLANE or the profile",
                USAGE,
            )
    elif address is not None:
        chosen = profiles.matching(address)
    else:
        chosen = profiles.entries.get(profiles.current or "")
    if named is not None:
        name = named
    elif chosen is not None:
        name = chosen.name
    elif address is not None and profiles.entries:
        # A login is bound to the control plane it was made for: an address no profile
        # names gets the login a `login --controlplane` to it would make, not another's.
        name = name_for(address)
    else:  # no profiles yet: the one login there is (tokens.json), as before profiles
        name = profiles.current or DEFAULT_PROFILE
    if address is not None:
        source = "flag"
    elif chosen is not None:
        address, source = chosen.controlplane, "profile"
    else:
        address, source = DEFAULT_CONTROLPLANE, "default"
    if ca_file is None and chosen is not None and chosen.controlplane == address:
        ca_file = chosen.ca_file
    return select(Target(address=address, ca_file=ca_file, profile=name, source=source))


def select(target: Target) -> Target:
    """Make ``target`` this command's choice (``login`` before its profile exists)."""
    _chosen.clear()
    _chosen[_context()] = target
    return target


def selected() -> Target:
    """This command's target: the last `resolve`, else one resolved from environment and file."""
    return _chosen.get(_context()) or resolve()


def read_ca(ca_file: str) -> str:
    """The PEM text of a CA file, or a usage error that says what is wrong with it."""
    try:
        pem = Path(ca_file).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the CA file {ca_file}: {exc}", USAGE) from None
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise CliError(f"{ca_file} holds no PEM certificate", USAGE)
    return pem


def remember(
    name: str,
    address: str,
    *,
    ca_file: str | None,
    issuer: str | None,
    client_id: str | None,
) -> Profile:
    """Save a login's profile and make it current; the CA file is copied, so it is pinned."""
    check_name(name)
    kept_ca: str | None = None
    if ca_file is not None:
        source = Path(ca_file).expanduser()
        pem = read_ca(ca_file)
        copy = ca_copy_path(name)
        if source.resolve() != copy.resolve():
            write_private(copy, pem)
        kept_ca = str(copy)
    profiles = Profiles.load()
    profile = Profile(name, address, kept_ca, issuer, client_id)
    profiles.entries[name] = profile
    profiles.current = name
    profiles.save()
    select(Target(address=address, ca_file=kept_ca, profile=name, source="profile"))
    return profile


def forget(name: str) -> Profile | None:
    """Remove a profile (and its CA copy); the current one is then no profile at all."""
    profiles = Profiles.load()
    removed = profiles.entries.pop(check_name(name), None)
    if removed is None:
        return None
    if profiles.current == name:
        profiles.current = None
    profiles.save()
    with contextlib.suppress(FileNotFoundError):
        ca_copy_path(name).unlink()
    return removed

"""The CLI and the agent install without the control plane's dependencies, so they must not
import the control plane: checked over their source (every import, also inside functions) and
by importing them in a fresh interpreter that cannot load the control plane's extra."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# The extra's modules (`gatehouse[controlplane]`): an agent host does not have them.
CONTROLPLANE_EXTRA = (
    "sqlmodel",
    "sqlalchemy",
    "alembic",
    "pglast",
    "psycopg",
    "joserfc",
    "sqlglot",
)
# cli/serve.py is the module of `gatehouse controlplane serve`, the control plane's entry point:
# the command table (cli/commands.py) loads it for the `controlplane` verb only; it may import
# the control plane, and the CLI tells the user to install the extra when that fails. Every
# other verb's module is loaded by the second test below with the control plane blocked.
EXEMPT = {"cli/serve.py"}


def imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, enclosing function or "", line) of every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[str, str, int]] = []

    def walk(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                walk(child, function or child.name)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, function, child.lineno))
            walk(child, function)

    walk(tree, "")
    return found


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for module, function, line in imports(path):
            top = module.partition(".")[0]
            if top in forbidden and relative not in EXEMPT:
                where = f"in {function}()" if function else "at module level"
                problems.append(f"{relative}:{line} imports {module} {where}")
    return problems


def test_the_cli_and_the_agent_import_nothing_from_the_control_plane() -> None:
    for package in ("cli", "agent", "trail", "wire", "redact"):
        assert offending(package, ("controlplane", *CONTROLPLANE_EXTRA)) == [], package


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    if True:\n        from controlplane.x import y\n")
    assert imports(source) == [("controlplane.x", "f", 3)]


def test_the_trail_package_imports_only_the_stdlib_its_encoders_and_cryptography() -> None:
    allowed = set(sys.stdlib_module_names) | {"trail", "rfc8785", "orjson", "cryptography"}
    for path in sorted((ROOT / "trail").rglob("*.py")):
        tops = {module.partition(".")[0] for module, _, _ in imports(path)}
        assert tops <= allowed, (path.name, tops - allowed)


# Blocks the control plane and its extra in a fresh interpreter, then imports every CLI verb and
# the agent's modules; prints what got loaded.
PROBE = """
import importlib, json, sys
from importlib.abc import MetaPathFinder

BLOCKED = {blocked!r}

class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
        return None

sys.meta_path.insert(0, Block())
import pkgutil, agent
for module in pkgutil.walk_packages(agent.__path__, "agent."):
    importlib.import_module(module.name)
from cli.commands import walk
from cli.parser import load
for words, command in walk():
    if words[0] != "controlplane":
        load(command.handler)
        if isinstance(command.params, str):
            load(command.params)
print(json.dumps(sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)))
"""


def test_every_cli_verb_and_the_agent_load_without_the_control_plane() -> None:
    blocked = ("controlplane", *CONTROLPLANE_EXTRA, "pydantic", "typer", "click")
    probe = PROBE.format(blocked=blocked)
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_controlplane_serve_without_the_extra_names_it(tmp_path: Path) -> None:
    """What an agent-only install shows for `gatehouse controlplane serve`: the extra to
    install, not a traceback."""
    probe = PROBE.split("import pkgutil", maxsplit=1)[0].format(blocked=("sqlmodel",)) + (
        "import sys, cli.main\n"
        "sys.argv = ['gatehouse', 'controlplane', 'serve', '--dev', '--data-dir', "
        f"{str(tmp_path)!r}]\n"
        "cli.main.run()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'gatehouse[controlplane]'" in done.stderr
    assert "module sqlmodel is not installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_reader_gone_away_is_quiet_at_exit() -> None:
    """`gatehouse exec … | head -1`: stdout's reader left with output still buffered; exit 1,
    no traceback and no "Exception ignored" noise, now without click's private wrapper."""
    probe = (
        "import errno, sys, cli.execute, cli.main\n"
        "sys.argv = ['gatehouse', 'exec', 'db', '--', 'true']\n"
        "def fails(**_):\n"
        "    sys.stdout.write('row\\n' * 10)\n"
        "    raise BrokenPipeError(errno.EPIPE, 'Broken pipe')\n"
        "cli.execute.execute = fails\n"
        "cli.main.run()\n"
    )
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""

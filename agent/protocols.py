"""Which engine serves a connection type: the one place the agent lists its protocols.

A new protocol is a folder (`agent/<protocol>/`) with an `Engine` (agent/engines.py) and one
line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.engines import Engine
from agent.http.engine import HttpEngine
from agent.mysql.engine import MysqlEngine
from agent.pg.engine import PgEngine
from agent.term.engine import ShellEngine, ssh_engine

ENGINES: Mapping[str, Engine] = {
    "postgres": PgEngine(),
    "mysql": MysqlEngine(),
    "ssh": ssh_engine(),
    "shell": ShellEngine(),
    "http": HttpEngine(),
}
FALLBACK = ENGINES["postgres"]
"""Refuses a session of a type this agent has no engine for, or of no known type whose client's
first bytes no engine recognises (or none came)."""

"""Which inspector serves a connection type: the one place the control plane lists the
protocols it relays.

A new protocol is a folder (`controlplane/relay/<protocol>/`) with an inspector
(controlplane/relay/inspection.py) and its factory, and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.relay.http import inspector as http
from controlplane.relay.inspection import InspectorFactory
from controlplane.relay.mysql import inspector as mysql
from controlplane.relay.pg import inspector as pg
from controlplane.relay.term import inspector as term

INSPECTORS: Mapping[str, InspectorFactory] = {
    "postgres": pg.open_inspector,
    "mysql": mysql.open_inspector,
    "ssh": term.open_inspector,
    "shell": term.open_inspector,
    "http": http.open_inspector,
}
SUPPORTED_TYPES = frozenset(INSPECTORS)
"""The connection types this control plane relays; a session of another type is refused."""

"""The session's prepared statements and portals, as the *server* holds them.

A name is kept only once the target confirmed it (ParseComplete, BindComplete, the
CommandComplete of PREPARE or DECLARE): a Parse the server rejected (42P05, a syntax error, a
pipeline skipped after an error) must not change what the inspector believes the name stands
for, or the trail would record one text while another runs (decision 0010). Within one
pipeline, what an earlier message of the same pipeline creates is certain for a later one: if
the earlier one fails, the server skips the rest up to the Sync. That is the ``Overlay``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controlplane.relay.pg_sql import Effect

#: Prepared statements plus portals one session may hold (PostgreSQL itself has no limit).
MAX_NAMES = 10_000


@dataclass(frozen=True, slots=True)
class Prepared:
    """A prepared statement: the text the server parsed under that name."""

    text: str
    param_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Portal:
    """A portal (protocol Bind) or SQL cursor: the statement it runs and its parameters."""

    text: str
    params: tuple[str | None, ...] = ()
    holdable: bool = False  # DECLARE … WITH HOLD outlives its transaction
    prepared: tuple[tuple[str, str], ...] = ()  # EXECUTEs inside ``text`` and what they ran


@dataclass(slots=True)
class Overlay:
    """Names created or dropped earlier in the same pipeline (or simple Query)."""

    statements: dict[str, Prepared | None] = field(default_factory=dict)
    portals: dict[str, Portal | None] = field(default_factory=dict)
    statements_cleared: bool = False  # DEALLOCATE ALL / DISCARD ALL earlier in it
    portals_cleared: bool = False  # CLOSE ALL / DISCARD ALL earlier in it

    def apply(self, effect: Effect) -> None:
        """What a statement of the pipeline will have done to the names, if it runs."""
        if effect.op == "prepare" and effect.name is not None:
            self.statements[effect.name] = Prepared(effect.text)
        elif effect.op == "deallocate":
            if effect.name is None:
                self.statements.clear()
                self.statements_cleared = True
            else:
                self.statements[effect.name] = None
        elif effect.op == "declare" and effect.name is not None:
            self.portals[effect.name] = Portal(effect.text, holdable=effect.holdable)
        elif effect.op == "close":
            if effect.name is None:
                self.portals.clear()
                self.portals_cleared = True
            else:
                self.portals[effect.name] = None
        elif effect.op == "discard":
            self.statements.clear()
            self.portals.clear()
            self.statements_cleared = self.portals_cleared = True


@dataclass(slots=True)
class Names:
    """What the server confirmed it holds."""

    statements: dict[str, Prepared] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.statements) + len(self.portals)

    def apply(self, effect: Effect) -> None:
        """A SQL statement that touches names completed on the server."""
        if effect.op == "prepare" and effect.name is not None:
            self.statements[effect.name] = Prepared(effect.text)
        elif effect.op == "deallocate":
            if effect.name is None:
                self.statements.clear()
            else:
                self.statements.pop(effect.name, None)
        elif effect.op == "declare" and effect.name is not None:
            self.portals[effect.name] = Portal(effect.text, holdable=effect.holdable)
        elif effect.op == "close":
            if effect.name is None:
                self.portals.clear()
            else:
                self.portals.pop(effect.name, None)
        elif effect.op == "discard":
            self.statements.clear()
            self.portals.clear()

    def transaction_ended(self) -> None:
        """Named portals and cursors not declared WITH HOLD end with their transaction.

        A holdable cursor of a transaction that rolled back is gone too; keeping it here is
        safe: a FETCH of it fails on the server, and a new DECLARE of the name replaces it.
        """
        self.portals = {name: p for name, p in self.portals.items() if p.holdable and name}

"""The session's prepared statements and portals, as the *server* holds them.

A name is kept only once the target confirmed it (ParseComplete, BindComplete, the
CommandComplete of PREPARE or DECLARE): a Parse the server rejected (42P05, a syntax error, a
pipeline skipped after an error) must not change what the inspector believes the name stands
for, or the trail would record one text while another runs (decision 0010). Within one
pipeline, what an earlier message of the same pipeline creates is certain for a later one: if
the earlier one fails, the server skips the rest up to the Sync. That is the ``Overlay``.

A portal's text is *proven* from its confirmation until user-defined code may have run that
could close it and open another portal under the same name (a function called by any
statement, a trigger, a DO block, the deferred triggers and holdable cursors a COMMIT runs).
A portal being executed (FETCH, Execute) is active and cannot be dropped, so the code of its
own statement leaves it proven. A name the inspector never saw created may still exist: code
may have opened it (a function returning a refcursor). Neither is claimed in the trail.

A prepared statement's text is proven the same way: code can run ``DEALLOCATE s1`` and
``PREPARE s1 AS …`` through SPI, so after any code a named statement stands for a text nobody
can know (no statement is active: one being executed can be deallocated). The unnamed statement
is always proven: SQL ``PREPARE`` needs a name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

from controlplane.relay.pg.sql import Effect

#: Prepared statements plus portals one session may hold (PostgreSQL itself has no limit).
MAX_NAMES = 10_000


@dataclass(frozen=True, slots=True)
class Prepared:
    """A prepared statement: the text the server parsed under that name."""

    text: str
    param_types: tuple[int, ...] = ()
    planned: bool = True  # a Bind plans it (and may call functions for that)
    # Made by a protocol Parse of ``text`` (not SQL PREPARE): the gateway can Parse it again.
    parsed: bool = True
    proven: bool = True  # no code that could have prepared the name again ran since
    seen: int = 0  # how many times code may have run when it was confirmed (see Portal)


@dataclass(frozen=True, slots=True)
class Portal:
    """A portal (protocol Bind) or SQL cursor: the statement it runs and its parameters."""

    text: str
    params: tuple[str | None, ...] = ()
    holdable: bool = False  # DECLARE … WITH HOLD outlives its transaction
    # Bound from this prepared statement while its text was not proven: the text is a guess.
    statement: str | None = None
    # Bound from a statement SQL PREPARE made (``text`` is the PREPARE): running it runs the
    # query inside, which may run code (True) or not (False). None: it runs ``text``.
    inner_code: bool | None = None
    proven: bool = True  # no code that could have re-opened the name ran since it was confirmed
    known: bool = True  # False: a name never seen created, which code may have opened
    # Where it is kept: how many times code may have run when it was confirmed (or when code
    # that ran it, and so could not replace it, ended). Proven while that count is current.
    seen: int = 0
    closed: bool = False  # in an Overlay: closed earlier in the pipeline


#: A portal the inspector never saw created: code that ran may have opened one by that name.
UNKNOWN: Final = Portal("", proven=False, known=False)


@dataclass(frozen=True, slots=True)
class Step:
    """One statement (or protocol message) as the names see it once the server ran it."""

    effect: Effect | None = None
    runs_code: bool = False  # it may run user-defined code, which may re-open any portal …
    keeps: frozenset[str] = frozenset()  # … but the ones it runs: they are active meanwhile


@dataclass(slots=True)
class _Portals:
    """Portals by name, each proven while no code ran since it was confirmed; one counter
    makes code that ran cost the same however many portals there are."""

    portals: dict[str, Portal] = field(default_factory=dict)
    runs: int = 0  # how many times code may have run

    def put(self, name: str, portal: Portal) -> None:
        self.portals[name] = replace(portal, seen=self.runs)

    def get(self, name: str) -> Portal | None:
        """The portal, unproven if code ran since it was confirmed (never the unnamed one: no
        code can open a portal without a name)."""
        portal = self.portals.get(name)
        if portal is None or not name or portal.seen == self.runs or not portal.proven:
            return portal
        return replace(portal, proven=False)

    def code_ran(self, keeps: frozenset[str] = frozenset()) -> None:
        """Every portal but ``keeps`` (active while the code ran) may have been re-opened."""
        self.runs += 1
        for name in keeps:
            portal = self.portals.get(name)
            if portal is not None and portal.seen == self.runs - 1:
                self.portals[name] = replace(portal, seen=self.runs)


@dataclass(slots=True)
class Overlay:
    """Names created or dropped earlier in the same pipeline (or simple Query)."""

    statements: dict[str, Prepared | None] = field(default_factory=dict)
    created: _Portals = field(default_factory=_Portals)  # portals it declares, binds, closes
    statements_cleared: bool = False  # DEALLOCATE ALL / DISCARD ALL earlier in it
    portals_cleared: bool = False  # CLOSE ALL / DISCARD ALL earlier in it
    # Code may run earlier in it (since the portals were cleared): confirmed portals are then
    # unproven for what follows, but those every such statement ran (``kept``).
    code_ran: bool = False
    kept: frozenset[str] = frozenset()
    runs: int = 0  # code that may run earlier in it, for the statements it (or the server) has

    def __len__(self) -> int:
        """How many names it changes."""
        return len(self.statements) + len(self.created.portals)

    def portal(self, name: str) -> tuple[bool, Portal | None]:
        """Whether the pipeline changed ``name`` and, if so, what it stands for: None when it
        was closed (``UNKNOWN`` if code ran since, which may have opened it again)."""
        portal = self.created.get(name)
        if portal is None:
            return False, None
        if portal.closed:
            return True, None if portal.seen == self.created.runs else UNKNOWN
        return True, portal

    def statement(self, name: str) -> tuple[bool, Prepared | None]:
        """Whether the pipeline changed statement ``name`` and, if so, what it stands for
        (None: deallocated), unproven if code may run between its Parse and here."""
        if name not in self.statements:
            return False, None
        prepared = self.statements[name]
        if prepared is None or not name or prepared.seen == self.runs:
            return True, prepared
        return True, replace(prepared, proven=False)

    def prepare(self, name: str, prepared: Prepared) -> None:
        self.statements[name] = replace(prepared, seen=self.runs)

    def bind(self, name: str, portal: Portal) -> None:
        self.created.put(name, portal)

    def close(self, name: str) -> None:
        self.created.put(name, Portal("", proven=False, known=False, closed=True))

    def run(self, step: Step) -> None:
        """What a statement of the pipeline will have done, if it runs."""
        if step.runs_code:
            self.runs += 1
            self.kept = self.kept & step.keeps if self.code_ran else step.keeps
            self.code_ran = True
            self.created.code_ran(step.keeps)
        if step.effect is not None:
            self.apply(step.effect)

    def apply(self, effect: Effect) -> None:
        """What a statement of the pipeline will have done to the names, if it runs."""
        if effect.op == "prepare" and effect.name is not None:
            self.prepare(effect.name, Prepared(effect.text, planned=effect.runs_code, parsed=False))
        elif effect.op == "deallocate":
            if effect.name is None:
                self.statements.clear()
                self.statements_cleared = True
            else:
                self.statements[effect.name] = None
        elif effect.op == "declare" and effect.name is not None:
            self.bind(effect.name, Portal(effect.text, holdable=effect.holdable))
        elif effect.op == "close":
            if effect.name is None:
                self._clear_portals()
            else:
                self.close(effect.name)
        elif effect.op == "discard":
            self.statements.clear()
            self.statements_cleared = True
            self._clear_portals()

    def _clear_portals(self) -> None:
        self.created = _Portals()
        self.portals_cleared = True
        self.code_ran, self.kept = False, frozenset()


@dataclass(slots=True)
class Names:
    """What the server confirmed it holds."""

    statements: dict[str, Prepared] = field(default_factory=dict)
    held: _Portals = field(default_factory=_Portals)
    code_in_transaction: bool = False  # its COMMIT may run code (deferred triggers, …)

    def __len__(self) -> int:
        return len(self.statements) + len(self.held.portals)

    def portal(self, name: str) -> Portal | None:
        return self.held.get(name)

    def statement(self, name: str) -> Prepared | None:
        """The prepared statement, unproven if code ran since it was confirmed."""
        prepared = self.statements.get(name)
        if prepared is None or not name or prepared.seen == self.held.runs or not prepared.proven:
            return prepared
        return replace(prepared, proven=False)

    def prepare(self, name: str, prepared: Prepared) -> None:
        self.statements[name] = replace(prepared, seen=self.held.runs, proven=True)

    def bind(self, name: str, portal: Portal) -> None:
        self.held.put(name, portal)

    def drop_portal(self, name: str) -> None:
        self.held.portals.pop(name, None)

    def run(self, step: Step) -> None:
        """A statement (or a Bind, which may plan) ran on the server."""
        if step.runs_code:
            self.unprove(step.keeps)
        if step.effect is not None:
            self.apply(step.effect)

    def unprove(self, keeps: frozenset[str] = frozenset()) -> None:
        """Code ran: every portal but ``keeps`` may have been closed and re-opened."""
        self.code_in_transaction = True
        self.held.code_ran(keeps)

    def apply(self, effect: Effect) -> None:
        """A SQL statement that touches names completed on the server."""
        if effect.op == "prepare" and effect.name is not None:
            self.prepare(effect.name, Prepared(effect.text, planned=effect.runs_code, parsed=False))
        elif effect.op == "deallocate":
            if effect.name is None:
                self.statements.clear()
            else:
                self.statements.pop(effect.name, None)
        elif effect.op == "declare" and effect.name is not None:
            self.bind(effect.name, Portal(effect.text, holdable=effect.holdable))
        elif effect.op == "close":
            if effect.name is None:
                self.held.portals.clear()
            else:
                self.drop_portal(effect.name)
        elif effect.op == "discard":
            self.statements.clear()
            self.held.portals.clear()

    def transaction_ended(self) -> None:
        """Named portals and cursors not declared WITH HOLD end with their transaction.

        A holdable cursor of a transaction that rolled back is gone too; keeping it here is
        safe: a FETCH of it fails on the server, and a new DECLARE of the name replaces it.
        If code ran in the transaction, its end may have run more (deferred triggers, and the
        query of each holdable cursor, to keep its rows), which may have re-opened any of them.
        """
        portals = self.held.portals
        self.held.portals = {name: p for name, p in portals.items() if p.holdable and name}
        if self.code_in_transaction:
            self.held.code_ran()
        self.code_in_transaction = False

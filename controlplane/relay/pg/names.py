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

from dataclasses import dataclass, field
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

    def with_proven(self, proven: bool) -> Prepared:
        """The same statement, proven or not (the constructor: a third of `replace`'s cost)."""
        return Prepared(self.text, self.param_types, self.planned, self.parsed, proven)


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
    closed: bool = False  # in an Overlay: closed earlier in the pipeline

    def unproven(self) -> Portal:
        """The same portal, no longer proven (the constructor: a third of `replace`'s cost)."""
        return Portal(
            self.text,
            self.params,
            self.holdable,
            self.statement,
            self.inner_code,
            False,
            self.known,
            self.closed,
        )


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
    makes code that ran cost the same however many portals there are.

    Beside each portal (not in it: the portals are frozen, and stamping a copy cost a
    `dataclasses.replace` several times per statement), ``seen`` keeps how many times code
    may have run when it was confirmed, or when code that ran it (and so could not replace
    it) ended. A portal is proven while that count is current. Both dicts hold the same names.
    """

    portals: dict[str, Portal] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    runs: int = 0  # how many times code may have run

    def put(self, name: str, portal: Portal) -> None:
        self.portals[name] = portal
        self.seen[name] = self.runs

    def get(self, name: str) -> Portal | None:
        """The portal, unproven if code ran since it was confirmed (never the unnamed one: no
        code can open a portal without a name)."""
        portal = self.portals.get(name)
        if portal is None or not name or not portal.proven or self.seen[name] == self.runs:
            return portal
        return portal.unproven()

    def current(self, name: str) -> bool:
        """Whether no code ran since portal ``name`` was put (False when there is none)."""
        return self.seen.get(name) == self.runs

    def drop(self, name: str) -> None:
        self.portals.pop(name, None)
        self.seen.pop(name, None)

    def clear(self) -> None:
        self.portals.clear()
        self.seen.clear()

    def keep_holdable(self) -> None:
        """Only the named portals declared WITH HOLD stay (a transaction ended)."""
        if not self.portals:
            return
        self.portals = {name: p for name, p in self.portals.items() if p.holdable and name}
        self.seen = {name: self.seen[name] for name in self.portals}

    def code_ran(self, keeps: frozenset[str] = frozenset()) -> None:
        """Every portal but ``keeps`` (active while the code ran) may have been re-opened."""
        self.runs += 1
        seen = self.seen
        for name in keeps:
            if seen.get(name) == self.runs - 1:
                seen[name] = self.runs


@dataclass(slots=True)
class Overlay:
    """Names created or dropped earlier in the same pipeline (or simple Query)."""

    statements: dict[str, Prepared | None] = field(default_factory=dict)
    # Beside each statement it Parses or PREPAREs: ``runs`` then (see ``_Portals.seen``).
    statement_seen: dict[str, int] = field(default_factory=dict)
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
            return True, None if self.created.current(name) else UNKNOWN
        return True, portal

    def statement(self, name: str) -> tuple[bool, Prepared | None]:
        """Whether the pipeline changed statement ``name`` and, if so, what it stands for
        (None: deallocated), unproven if code may run between its Parse and here."""
        if name not in self.statements:
            return False, None
        prepared = self.statements[name]
        if prepared is None or not name or self.statement_seen[name] == self.runs:
            return True, prepared
        return True, prepared.with_proven(False)

    def prepare(self, name: str, prepared: Prepared) -> None:
        self.statements[name] = prepared
        self.statement_seen[name] = self.runs

    def deallocate(self, name: str | None) -> None:
        """Statement ``name`` (None: every statement) is dropped earlier in the pipeline."""
        if name is None:
            self.statements.clear()
            self.statement_seen.clear()
            self.statements_cleared = True
        else:
            self.statements[name] = None

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
            self.deallocate(effect.name)
        elif effect.op == "declare" and effect.name is not None:
            self.bind(effect.name, Portal(effect.text, holdable=effect.holdable))
        elif effect.op == "close":
            if effect.name is None:
                self._clear_portals()
            else:
                self.close(effect.name)
        elif effect.op == "discard":
            self.deallocate(None)
            self._clear_portals()

    def _clear_portals(self) -> None:
        self.created = _Portals()
        self.portals_cleared = True
        self.code_ran, self.kept = False, frozenset()


@dataclass(slots=True)
class Names:
    """What the server confirmed it holds."""

    statements: dict[str, Prepared] = field(default_factory=dict)
    # Beside each statement: ``held.runs`` when it was confirmed (see ``_Portals.seen``).
    statement_seen: dict[str, int] = field(default_factory=dict)
    held: _Portals = field(default_factory=_Portals)
    code_in_transaction: bool = False  # its COMMIT may run code (deferred triggers, …)

    def __len__(self) -> int:
        return len(self.statements) + len(self.held.portals)

    def portal(self, name: str) -> Portal | None:
        return self.held.get(name)

    def statement(self, name: str) -> Prepared | None:
        """The prepared statement, unproven if code ran since it was confirmed."""
        prepared = self.statements.get(name)
        if (
            prepared is None
            or not name
            or not prepared.proven
            or self.statement_seen[name] == self.held.runs
        ):
            return prepared
        return prepared.with_proven(False)

    def prepare(self, name: str, prepared: Prepared) -> None:
        self.statements[name] = prepared if prepared.proven else prepared.with_proven(True)
        self.statement_seen[name] = self.held.runs

    def drop_statement(self, name: str) -> None:
        self.statements.pop(name, None)
        self.statement_seen.pop(name, None)

    def clear_statements(self) -> None:
        self.statements.clear()
        self.statement_seen.clear()

    def bind(self, name: str, portal: Portal) -> None:
        self.held.put(name, portal)

    def drop_portal(self, name: str) -> None:
        self.held.drop(name)

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
                self.clear_statements()
            else:
                self.drop_statement(effect.name)
        elif effect.op == "declare" and effect.name is not None:
            self.bind(effect.name, Portal(effect.text, holdable=effect.holdable))
        elif effect.op == "close":
            if effect.name is None:
                self.held.clear()
            else:
                self.drop_portal(effect.name)
        elif effect.op == "discard":
            self.clear_statements()
            self.held.clear()

    def transaction_ended(self) -> None:
        """Named portals and cursors not declared WITH HOLD end with their transaction.

        A holdable cursor of a transaction that rolled back is gone too; keeping it here is
        safe: a FETCH of it fails on the server, and a new DECLARE of the name replaces it.
        If code ran in the transaction, its end may have run more (deferred triggers, and the
        query of each holdable cursor, to keep its rows), which may have re-opened any of them.
        """
        self.held.keep_holdable()
        if self.code_in_transaction:
            self.held.code_ran()
        self.code_in_transaction = False

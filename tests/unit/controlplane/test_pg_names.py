"""The session's names (controlplane/relay/pg/names.py): a name's "code may have run" count is
kept beside the frozen statement or portal, and a name is proven only while it is current."""

import dataclasses

from controlplane.relay.pg.names import UNKNOWN, Names, Overlay, Portal, Prepared, Step
from controlplane.relay.pg.sql import Effect

CODE = Step(runs_code=True)


def test_copies_change_only_proven() -> None:
    """The constructor calls that replace `dataclasses.replace` copy every other field (a field
    added or moved without them would fail here)."""
    prepared = Prepared("select $1", (23,), planned=False, parsed=False, proven=True)
    assert prepared.with_proven(False) == dataclasses.replace(prepared, proven=False)
    assert prepared.with_proven(False).with_proven(True) == prepared
    portal = Portal(
        "select 1",
        ("x", None),
        holdable=True,
        statement="s1",
        inner_code=False,
        proven=True,
        known=True,
        closed=True,
    )
    assert portal.unproven() == dataclasses.replace(portal, proven=False)
    assert [f.name for f in dataclasses.fields(Prepared)] == [
        "text",
        "param_types",
        "planned",
        "parsed",
        "proven",
    ]
    assert [f.name for f in dataclasses.fields(Portal)] == [
        "text",
        "params",
        "holdable",
        "statement",
        "inner_code",
        "proven",
        "known",
        "closed",
    ]


def test_a_portal_is_proven_until_code_runs_unless_it_was_running() -> None:
    names = Names()
    names.bind("c1", Portal("select f()"))
    names.bind("c2", Portal("select g()"))
    names.bind("", Portal("select h()"))
    held = names.portal("c1")
    assert held is not None and held.proven
    names.unprove(frozenset({"c1"}))  # c1 ran the code: active, it cannot have been replaced
    c1, c2, unnamed = names.portal("c1"), names.portal("c2"), names.portal("")
    assert c1 is not None and c1.proven
    assert c2 is not None and not c2.proven and c2.text == "select g()"
    assert unnamed is not None and unnamed.proven  # no code opens a portal without a name
    names.unprove()
    c1 = names.portal("c1")
    assert c1 is not None and not c1.proven
    names.bind("c2", Portal("select 2"))  # confirmed again: proven again
    c2 = names.portal("c2")
    assert c2 is not None and c2.proven and c2.text == "select 2"
    # The stored portal itself is never changed, only the copy handed out.
    assert names.held.portals["c1"].proven


def test_dropped_portals_leave_no_count_behind() -> None:
    names = Names()
    names.bind("c1", Portal("select 1"))
    names.bind("h1", Portal("select 2", holdable=True))
    names.bind("", Portal("select 3", holdable=True))
    names.drop_portal("c1")
    assert names.portal("c1") is None and "c1" not in names.held.seen
    names.bind("c1", Portal("select 1"))
    names.transaction_ended()  # only named holdable portals outlive the transaction
    assert set(names.held.portals) == set(names.held.seen) == {"h1"}
    h1 = names.portal("h1")
    assert h1 is not None and h1.proven
    names.unprove()
    names.transaction_ended()  # code ran in the transaction: its end may re-open h1
    h1 = names.portal("h1")
    assert h1 is not None and not h1.proven
    names.run(Step(Effect("close")))
    assert not names.held.portals and not names.held.seen and len(names) == 0


def test_a_prepared_statement_is_proven_until_code_runs() -> None:
    names = Names()
    names.prepare("s1", Prepared("select f()"))
    names.prepare("", Prepared("select g()"))
    s1 = names.statement("s1")
    assert s1 is not None and s1.proven
    names.run(CODE)
    s1, unnamed = names.statement("s1"), names.statement("")
    assert s1 is not None and not s1.proven and s1.text == "select f()"
    assert unnamed is not None and unnamed.proven  # SQL PREPARE needs a name
    names.prepare("s1", s1)  # confirmed again (Parsed again): proven, whatever it was given
    s1 = names.statement("s1")
    assert s1 is not None and s1.proven
    names.drop_statement("s1")
    assert names.statement("s1") is None and "s1" not in names.statement_seen
    names.run(Step(Effect("prepare", "p", "PREPARE p AS select 1", runs_code=False)))
    p = names.statement("p")
    assert p is not None and p.proven and not p.parsed and not p.planned
    names.run(Step(Effect("discard")))
    assert not names.statements and not names.statement_seen


def test_the_overlay_counts_code_earlier_in_the_pipeline() -> None:
    overlay = Overlay()
    overlay.prepare("s1", Prepared("select 1"))
    changed, s1 = overlay.statement("s1")
    assert changed and s1 is not None and s1.proven
    overlay.run(CODE)
    changed, s1 = overlay.statement("s1")
    assert changed and s1 is not None and not s1.proven
    assert overlay.statements["s1"] == Prepared("select 1")  # what it holds is unchanged
    overlay.deallocate("s1")
    assert overlay.statement("s1") == (True, None)
    assert overlay.statement("other") == (False, None)
    overlay.prepare("s1", Prepared("select 2"))
    assert overlay.statement("s1") == (True, Prepared("select 2"))
    overlay.deallocate(None)
    assert overlay.statements_cleared and not overlay.statements and not overlay.statement_seen


def test_the_overlay_keeps_what_a_closed_portal_became() -> None:
    overlay = Overlay()
    overlay.bind("c1", Portal("select 1"))
    overlay.run(Step(runs_code=True, keeps=frozenset({"c1"})))
    assert overlay.portal("c1") == (True, Portal("select 1"))
    overlay.close("c1")
    assert overlay.portal("c1") == (True, None)
    overlay.run(CODE)  # code after the close may have opened it again
    assert overlay.portal("c1") == (True, UNKNOWN)
    overlay.bind("c2", Portal("select 2"))
    overlay.run(CODE)
    changed, c2 = overlay.portal("c2")
    assert changed and c2 is not None and not c2.proven
    assert len(overlay) == 2

"""A StartupMessage's settings, read as the server reads them: its parameters and `options`."""

from __future__ import annotations

import pytest

from controlplane.relay.pg.startup import StartupRefused, settings, statement


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"user": "x", "database": "d", "application_name": "psql"}, []),
        ({"role": "boss"}, [("role", "boss")]),
        ({"ROLE": "boss", "DateStyle": "ISO", "TimeZone": "UTC"}, [("role", "boss")]),
        ({"options": "-c role=boss"}, [("role", "boss")]),
        ({"options": "-crole=boss --search-path=a,b"}, [("role", "boss"), ("search_path", "a,b")]),
        ({"options": "  -c\tstatement_timeout=5  "}, [("statement_timeout", "5")]),
        ({"options": r"-c search_path=a\ b"}, [("search_path", "a b")]),
        ({"options": r"-c x.y=back\\slash"}, [("x.y", "back\\slash")]),
        ({"options": "-c work-mem=1MB"}, [("work_mem", "1MB")]),
        ({"options": "-c a=1 -c b=x-y"}, [("a", "1"), ("b", "x-y")]),
        ({"options": "-c application_name=x -c extra_float_digits=3"}, []),
        # C's isspace, not Unicode's: a no-break space is part of the word.
        ({"options": "-c a=1\u00a0-c"}, [("a", "1\u00a0-c")]),
        ({"options": ""}, []),
        ({"replication": "database", "options": "-c role=boss"}, [("role", "boss")]),
    ],
)
def test_settings_are_what_the_server_applies(
    params: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    assert settings(params) == expected


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ("-P", "switch '-P' is not accepted"),
        ("-d 5", "switch '-d' is not accepted"),
        ("-e -c a=1", "switch '-e' is not accepted"),
        ("-c", "-c needs NAME=VALUE"),
        ("-c role", "is not NAME=VALUE"),
        ("--role", "is not NAME=VALUE"),
        ("--", "switch '--' is not accepted"),
        ("boss", "switch 'boss' is not accepted"),
        ("\\", "switch '' is not accepted"),
    ],
)
def test_what_the_gateway_cannot_read_is_refused(options: str, why: str) -> None:
    with pytest.raises(StartupRefused, match=why):
        settings({"options": options})


def test_too_many_settings_are_refused() -> None:
    with pytest.raises(StartupRefused, match="more than 64"):
        settings({f"x.s{n}": "1" for n in range(65)})


def test_the_statement_quotes_name_and_value() -> None:
    assert statement("role", "boss") == "SET \"role\" TO 'boss'"
    assert statement('we"ird', "it's") == "SET \"we\"\"ird\" TO 'it''s'"

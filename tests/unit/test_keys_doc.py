"""docs/keys.md shows gateway.key_retention.RETENTION: every row, in order, with its pattern, type, expiry and
words. A row added to the table and not to the page (or the other way round), or words changed on one side only,
fail here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.key_retention import RETENTION, Retention

DOC = Path(__file__).resolve().parents[2] / "docs" / "keys.md"
ROW = re.compile(r"^\| `([^`]+)` \| (\w+) \| (yes|no) \| (.+) \|$")


def page_rows(text: str) -> list[tuple[str, str, str, str]]:
    return [(m[1], m[2], m[3], m[4]) for m in map(ROW.match, text.splitlines()) if m]


def table_rows(table: tuple[Retention, ...] = RETENTION) -> list[tuple[str, str, str, str]]:
    return [(row.pattern, row.kind, "yes" if row.expires else "no", row.lives) for row in table]


def test_the_page_shows_the_table() -> None:
    assert page_rows(DOC.read_text()) == table_rows()


def test_the_page_names_the_setting_and_its_bounds() -> None:
    text = DOC.read_text()
    assert all(
        name in text
        for name in ("CLAIMGATE_RETENTION", "CLAIMGATE_IDEMPOTENCY_TTL", "CLAIMGATE_LOCK_SECONDS")
    )


BROKEN_PAGES = {
    "a row left out": lambda t: t.replace("| `{blocklist}:version` |", "| {blocklist}:version |"),
    "a type changed": lambda t: t.replace("| `{w:*}:locks` | zset |", "| `{w:*}:locks` | hash |"),
    "an expiry changed": lambda t: t.replace(
        "| `{w:*}:idem:*` | string | yes |", "| `{w:*}:idem:*` | string | no |"
    ),
    "words changed": lambda t: t.replace(
        "overwritten by each fence check", "overwritten by every fence check"
    ),
    "a row for no key": lambda t: t + "| `{w:*}:wishlist` | set | no | kept |\n",
}


@pytest.mark.parametrize("how", list(BROKEN_PAGES))
def test_a_page_out_of_step_fails(how: str) -> None:
    text = BROKEN_PAGES[how](DOC.read_text())
    assert text != DOC.read_text()
    assert page_rows(text) != table_rows()


def test_a_row_added_to_the_table_and_not_to_the_page_fails() -> None:
    table = (*RETENTION, Retention("{w:*}:wishlist", "set", "kept"))
    assert page_rows(DOC.read_text()) != table_rows(table)

"""A batch in one transaction: the ledger's checks, every table's rows, what waited for the claims it commits;
entry by entry when one entry breaks it on its own account."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import msgspec

from worker.events import Entry
from worker.faults import crash_point
from worker.sink import sql
from worker.sink.checks import check_claims, check_versions, hold
from worker.sink.collect import DELIVERING, EntryFault, collect
from worker.sink.rows import ClaimRow, Rows, arrays
from worker.sink.write import write as write_rows

# An entry's own fault (undecodable; Postgres refusing its data or a constraint only it breaks): found by
# applying the batch entry by entry, never a reason to hold back the rest of it.
ENTRY_FAULTS = (EntryFault, asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


async def _release(conn: asyncpg.Connection, query: str, *args: object) -> int:
    """Take out what ``query`` finds waiting and apply it, in a savepoint: all at once, or, should Postgres refuse
    that, each entry in a savepoint of its own, one it refuses (its data, once its claim came) going to
    ``conflicts`` instead of failing every batch that releases it. How many entries were applied."""
    released = [
        Entry(r["stream"], r["entry_id"], msgspec.json.decode(r["fields"]))
        for r in await conn.fetch(query, *args)
    ]
    if not released:
        return 0
    try:
        async with conn.transaction():
            rows = collect(released)
            await check_versions(conn, rows)
            await write_rows(conn, rows)
        return len(released)
    except ENTRY_FAULTS:
        pass
    applied = 0
    for entry in released:
        try:
            async with conn.transaction():
                rows = collect([entry])
                await check_versions(conn, rows)
                await write_rows(conn, rows)
            applied += 1
        except ENTRY_FAULTS as exc:
            refused = Rows()
            refused.reject(entry, f"refused by Postgres when its claim came: {exc!r}")
            await write_rows(conn, refused)
    return applied


async def apply(conn: asyncpg.Connection, entries: list[Entry]) -> set[tuple[str, str]]:
    """Write a batch in one transaction; raises (and writes nothing) if an entry cannot be taken
    (``ENTRY_FAULTS``) or Postgres is away. Returns the entries the ledger's checks refused: recorded in
    ``conflicts``, written nowhere else (and not to be delivered).

    The batch goes with what waited for the claims it commits; then, committed, what waits for the claims it
    commits or held for. Two transactions committing a claim and its entries at the same instant do not see each
    other's rows; whichever commits last finds the other's once committed."""
    rows = collect(entries)
    async with conn.transaction():
        await check_claims(conn, rows)
        claims = rows.kept(rows.claims)
        if claims:
            await conn.execute(sql.INSERT_CLAIMS, *arrays(claims, ClaimRow))
        await hold(conn, rows)
        await check_versions(conn, rows)
        await write_rows(conn, rows)
        joined = {row.claim_id for row in claims}
        if joined:
            await _release(conn, sql.RELEASE_FOR, sorted(joined))
        crash_point("before_commit")
    joined |= {claim_id for key, (_, claim_id) in rows.claim_of.items() if key in rows.held}
    if joined:
        async with conn.transaction():
            await _release(conn, sql.RELEASE_FOR, sorted(joined))
    return set(rows.conflicts)


@dataclass
class Written:
    """What became of a batch: entries that failed on their own account ((stream, entry id) -> reason: an id
    is unique only within its stream), entries the ledger's checks put into ``conflicts``, and the claims whose
    coupons the ledger already holds (their ``delivered`` event is committed: nothing left to deliver; one held
    for its claim until now is in the wallet too, unless Redis lost it, and then the wallet is behind and its
    restore, which applies what waited first, rebuilds it)."""

    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    conflicts: set[tuple[str, str]] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)

    def deliverable(self, entries: list[Entry]) -> list[Entry]:
        """The entries whose coupons are still to be delivered (written, not refused, not delivered yet)."""
        return [
            e
            for e in entries
            if e.key not in self.failed
            and e.key not in self.conflicts
            and isinstance(event := e.event, DELIVERING)
            and event.claim_id not in self.delivered
        ]

    def settled(self, entries: list[Entry]) -> list[Entry]:
        """Written or recorded as a conflict: to be acknowledged."""
        return [e for e in entries if e.key not in self.failed]


async def write(conn: asyncpg.Connection, entries: list[Entry]) -> Written:
    """The batch in one transaction; if an entry breaks it on its own account, each entry alone."""
    try:
        written = Written(conflicts=await apply(conn, entries))
    except ENTRY_FAULTS:
        return await apply_one_by_one(conn, entries)
    written.delivered = await delivered_claims(conn, entries)
    return written


async def delivered_claims(conn: asyncpg.Connection, entries: list[Entry]) -> set[str]:
    """The batch's claims whose coupons the ledger holds: their ``delivered`` event, which the same script wrote
    with the coupons, is committed (in this batch or before), so the worker need not deliver them again; if Redis
    later lost them, restore rebuilds them from the ledger. Without this every claim cost a ``deliver`` call
    that changed nothing, since the gateway delivers before it answers."""
    claim_ids = [event.claim_id for e in entries if isinstance(event := e.event, DELIVERING)]
    if not claim_ids:
        return set()
    rows = await conn.fetch(sql.CLAIMS_WITH_COUPONS, claim_ids)
    return {r["claim_id"] for r in rows}


async def release_held(conn: asyncpg.Connection) -> int:
    """Apply what waits for any claim the ledger now holds: the entries a batch held while another committed
    their claim unseen. The worker calls it every second, reconcile and restore after their drains. How many
    entries it applied."""
    async with conn.transaction():
        return await _release(conn, sql.RELEASE_ALL)


async def apply_one_by_one(conn: asyncpg.Connection, entries: list[Entry]) -> Written:
    """After a batch failed on an entry's account: apply each entry alone; every entry not failing on its
    own is written."""
    written = Written()
    for entry in entries:
        try:
            written.conflicts |= await apply(conn, [entry])
        except EntryFault as fault:
            written.failed[entry.key] = fault.reason
        except ENTRY_FAULTS as exc:
            written.failed[entry.key] = f"refused by Postgres: {exc!r}"
    return written

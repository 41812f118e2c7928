"""The Postgres sink: one transaction per batch, each event applied at most once and in a safe order.

- each entry is decoded against the event schema (gateway/events.py) and turned into rows by its type's own
  function (``collect``): an entry that does not fit the schema is an ``EntryFault``;
- claims are unique on claim id (and event id): a redelivered ``claimed`` changes nothing;
- coupons are upserted only where the stored version is older, after the batch keeps each coupon's newest
  event, in coupon-id order so two workers never deadlock; ``coupon_events`` keeps the history once per version;
- no coupon without its claim (design.md): an entry about a claim's coupons (``delivered``, a checkout change)
  whose claim the ledger does not hold, in this batch or before, waits in ``held_entries`` (acknowledged, its
  seq counted) and reaches ``coupons`` in the transaction that finds its claim committed: the one that commits
  the claim, or any later batch (two lanes may commit a claim and its delivery at the same instant, each unseen
  by the other). A Redis that lost both then restores the wallet without the coupon, the activity without the
  claim, and sells the unit once;
- ``partition_marks`` keeps the highest seq persisted per partition;
- an entry that cannot be taken on its own account (undecodable, an unknown type, data Postgres refuses) is
  found by applying the batch entry by entry; the consumer dead-letters it after repeated failures.

Modules by job: ``rows`` (a named tuple per table), ``sql`` (the statements), ``collect`` (each event type's
rows), ``checks`` (the ledger's checks, holding), ``write`` (the tables' writes), ``apply`` (the transactions).
"""

from worker.sink.apply import (
    ENTRY_FAULTS,
    Written,
    apply,
    apply_one_by_one,
    delivered_claims,
    release_held,
    write,
)
from worker.sink.collect import DELIVERING, EntryFault, collect

__all__ = [
    "DELIVERING",
    "ENTRY_FAULTS",
    "EntryFault",
    "Written",
    "apply",
    "apply_one_by_one",
    "collect",
    "delivered_claims",
    "release_held",
    "write",
]

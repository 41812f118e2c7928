"""Every key pattern claimgate writes and its retention: how long it lives and what ends it (docs/keys.md shows this
table; tests hold it against keys.py's builders and against every key a workload of every writing script leaves)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from gateway.keys import BLOCKLIST, EVENTS_SUFFIX, FENCE_CHECKED


@dataclass(frozen=True, slots=True)
class Retention:
    """A key pattern, its Redis type, how long it lives and what ends it, and whether Redis expires it by itself
    (EX, EXPIRE). In a pattern, ``*`` inside the braces is a partition's id, elsewhere any rest of the key."""

    pattern: str
    kind: str  # string, hash, set, zset or stream
    lives: str
    expires: bool = False

    def matches(self, key: str) -> bool:
        return _pattern_regex(self.pattern).fullmatch(key) is not None


@functools.cache
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts, depth = [], 0
    for char in pattern:
        depth += {"{": 1, "}": -1}.get(char, 0)
        parts.append(("[^{}]+" if depth else ".+") if char == "*" else re.escape(char))
    return re.compile("".join(parts))


_ACT = "removed when the activity's partition retires, CLAIMGATE_RETENTION after the activity ended"
_KEPT = "kept (the partition is fixed per deployment)"
_IDEM = "EX the idempotency time (CLAIMGATE_IDEMPOTENCY_TTL); restore_record puts back the expiry it had"
_FAILS = "attempt id -> time, those older than the window (1 h) trimmed at each attempt; EXPIRE the window"


def _partition_rows(tag: str, lives: str) -> tuple[Retention, ...]:
    return (
        Retention(f"{tag}:seq", "string", f"one counter, raised by each event of the partition; {lives}"),
        Retention(
            f"{tag}{EVENTS_SUFFIX}", "stream", f"entries leave once persisted (trim); the stream: {lives}"
        ),
        Retention(
            f"{tag}:dead", "stream", f"entries leave when replay-dead writes them; the stream: {lives}"
        ),
    )


RETENTION: tuple[Retention, ...] = (
    Retention("{a:*}:act", "hash", f"the activity's hot config; {_ACT}"),
    Retention("{a:*}:users", "hash", f"user id -> packs taken; {_ACT}"),
    Retention("{a:*}:devices", "hash", f"device id -> packs taken; {_ACT}"),
    Retention("{a:*}:allow", "set", f"the allow-list's user ids; {_ACT}"),
    Retention("{a:*}:batches", "hash", f"code batch id -> packs reserved, or void; {_ACT}"),
    Retention(
        "{a:*}:retired",
        "string",
        "a retired partition's marker (its seq when it left Redis): kept while the activity stays retired (the"
        " fence reads it), deleted when a late change revives the partition (NOT YET BOUNDED: one per activity"
        " ever retired; issue 22 left open for its horizon)",
    ),
    Retention("{a:*}:idem:*", "string", f"a keyed claim's or grant call's record: {_IDEM}", expires=True),
    Retention(
        "{a:*}:grant:*",
        "hash",
        "an open keyed grant call's results: deleted when it closes; PEXPIRE what its record has left",
        expires=True,
    ),
    *_partition_rows("{a:*}", _ACT),
    Retention(
        "{w:*}:coupons",
        "hash",
        "coupon id -> record: a live coupon stays; one final (redeemed and past the refund window, expired,"
        " refunded and not returned) leaves CLAIMGATE_RETENTION after it became final (retention sweep, by"
        " `:final`)",
    ),
    Retention("{w:*}:u:*", "zset", "the user's coupon ids: each leaves with its coupon; gone when empty"),
    Retention(
        "{w:*}:orders",
        "hash",
        "user/order -> record: a live order stays; a finished one becomes a compact tombstone (its final answer)"
        " that leaves CLAIMGATE_RETENTION after it finished (retention sweep)",
    ),
    Retention(
        "{w:*}:locks",
        "zset",
        "coupon id -> lock deadline: each leaves at redeem or release, or at the lock sweep once lapsed"
        " (CLAIMGATE_LOCK_SECONDS, then within CLAIMGATE_WORKER_SWEEP_SECONDS); Redis drops the key when empty",
    ),
    Retention(
        "{w:*}:counters",
        "hash",
        "3 fields per activity with checkouts in the bucket: kept for now (NOT YET BOUNDED: a retired activity's"
        " fields are to leave with its partition; issue 22 left open for it)",
    ),
    Retention("{w:*}:fails:u:*", "zset", f"a user's code attempts: {_FAILS}", expires=True),
    Retention("{w:*}:fails:d:*", "zset", f"a device's code attempts: {_FAILS}", expires=True),
    Retention("{w:*}:idem:*", "string", f"a keyed code redeem's answer (code_settle): {_IDEM}", expires=True),
    Retention(
        "{w:*}:expiring",
        "zset",
        "coupon id -> valid_until of each coupon the expiry sweep has not handled: it leaves when the sweep does",
    ),
    Retention(
        "{w:*}:final",
        "zset",
        "coupon id -> when it became final: it leaves with its coupon, CLAIMGATE_RETENTION later (retention sweep)",
    ),
    Retention(
        "{w:*}:done",
        "zset",
        "user/order -> when the order finished: it leaves with its order, CLAIMGATE_RETENTION later (retention"
        " sweep); a lock on the order again takes it out",
    ),
    *_partition_rows("{w:*}", _KEPT),
    Retention(
        "{c:*}:codes",
        "hash",
        "code hash -> batch (+ redeemer, first answer once redeemed: a compact tombstone): dropped unredeemed if"
        " its batch is voided, else leaves CLAIMGATE_RETENTION after the batch's window ended (code retention sweep)",
    ),
    Retention("{c:*}:batches", "hash", "batch id -> activity, window, pack; leaves with the batch's codes"),
    Retention(
        "{c:*}:counters",
        "hash",
        "activity id -> codes redeemed from the bucket: kept for now (NOT YET BOUNDED: a retired activity's field"
        " is to leave with its partition; issue 22 left open for it)",
    ),
    *_partition_rows("{c:*}", _KEPT),
    Retention("{blocklist}:users", "set", "blocked user ids: each until an operator removes it"),
    Retention("{blocklist}:devices", "set", "blocked device ids: each until an operator removes it"),
    Retention("{blocklist}:entries", "hash", "who blocked each and when: each until an operator removes it"),
    Retention("{blocklist}:version", "string", "one counter, raised by each change of the blocklist"),
    *_partition_rows(BLOCKLIST.tag, _KEPT),
    Retention(FENCE_CHECKED, "string", "one small string, overwritten by each fence check that passes"),
)


def retention_of(key: str) -> list[Retention]:
    """The rows whose pattern ``key`` matches: exactly one for every key the project writes."""
    return [row for row in RETENTION if row.matches(key)]

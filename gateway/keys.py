"""Every Redis key claimgate uses, built here and nowhere else.

Partitions are Redis Cluster hash tags (design.md): ``{a:<activity>}``, ``{w:<bucket>}``, ``{c:<bucket>}``.
Each script receives only keys of one partition, so each runs in one slot.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from dataclasses import dataclass

from redis.crc import key_slot

EVENTS_SUFFIX = ":events"


def stable_bucket(value: str, buckets: int) -> int:
    """A bucket number that is the same in every process and machine (never Python's salted hash())."""
    return zlib.crc32(value.encode()) % buckets


def idempotency_digest(*parts: str) -> str:
    """A fixed-length name for a client-chosen key, so any printable key is safe inside a Redis key."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def slot_of(key: str | bytes) -> int:
    return int(key_slot(key.encode() if isinstance(key, str) else key))


@dataclass(frozen=True, slots=True)
class Partition:
    """One hash-tagged partition: its own ``seq`` and event stream."""

    tag: str

    @property
    def seq(self) -> str:
        return f"{self.tag}:seq"

    @property
    def events(self) -> str:
        return f"{self.tag}{EVENTS_SUFFIX}"

    @property
    def dead_letters(self) -> str:
        """Entries of this partition's stream that failed on their own N times, with the reason."""
        return f"{self.tag}:dead"


@dataclass(frozen=True, slots=True)
class ActivityKeys(Partition):
    @property
    def config(self) -> str:
        return f"{self.tag}:act"

    @property
    def user_counts(self) -> str:
        return f"{self.tag}:users"

    @property
    def device_counts(self) -> str:
        return f"{self.tag}:devices"

    @property
    def allow_list(self) -> str:
        return f"{self.tag}:allow"

    def idempotency(self, scope: str, key: str) -> str:
        return f"{self.tag}:idem:{idempotency_digest(scope, key)}"

    @property
    def no_idempotency(self) -> str:
        """Placeholder in the same slot for calls without an Idempotency-Key; scripts never touch it."""
        return f"{self.tag}:idem:-"

    def grant_call(self, operator: str, key: str) -> str:
        """A keyed grant call's record (``grant_call``): ``<body hash>|`` while open, ``<body hash>|<answer>``
        once closed; kept as long as any idempotency record."""
        return self.idempotency(f"grant-call\x1f{operator}", key)

    def grant_results(self, operator: str, key: str) -> str:
        """The final results of an open keyed grant call's users (place in the body -> result JSON); deleted when
        the call closes, and never kept longer than its record."""
        return f"{self.tag}:grant:{idempotency_digest('grant-call', operator, key)}"

    @property
    def code_batches(self) -> str:
        """Code batch id -> packs reserved from this activity's stock, or ``void``."""
        return f"{self.tag}:batches"


@dataclass(frozen=True, slots=True)
class WalletKeys(Partition):
    @property
    def coupons(self) -> str:
        return f"{self.tag}:coupons"

    def user_index(self, user_id: str) -> str:
        return f"{self.tag}:u:{user_id}"

    @property
    def user_index_pattern(self) -> str:
        """SCAN MATCH for every user index of the bucket (reconcile and restore look for strays)."""
        return f"{self.tag}:u:*"

    def user_of_index(self, key: str) -> str:
        return key[len(f"{self.tag}:u:") :]

    @property
    def orders(self) -> str:
        """Order -> the coupon it holds and how (hash field: ``order_field``)."""
        return f"{self.tag}:orders"

    @property
    def finished_orders(self) -> str:
        """Finished orders' fields by when they finished (a redeemed one: when its coupon's validity ended)."""
        return f"{self.tag}:done"

    @property
    def locks(self) -> str:
        """Locked coupon ids scored by their deadline: what the sweeper looks at."""
        return f"{self.tag}:locks"

    @property
    def counters(self) -> str:
        """Per-activity checkout figures of the bucket: ``<activity>|locked``, ``|redeemed``, ``|redeemed_value``."""
        return f"{self.tag}:counters"

    @property
    def expiring(self) -> str:
        """Coupon ids not yet handled by the expiry sweep, scored by when it should look at each: its
        ``valid_until`` (deliver, restore), later while a lock holds it. An entry leaves when the sweep finds its
        coupon final (into ``finished``) or gone."""
        return f"{self.tag}:expiring"

    @property
    def finished(self) -> str:
        """Coupon ids that nothing can change any more, scored by when each became final (its ``valid_until``, or
        when the sweep found the lock that held it then gone). Only the expiry sweep (and restore) adds to it;
        the retention sweep removes them from Redis once the retention has passed (``retain_coupons``)."""
        return f"{self.tag}:final"

    def failed_codes_of_user(self, user_id: str) -> str:
        """The user's code attempts not yet settled or judged invalid_code, scored by time (rolling window)."""
        return f"{self.tag}:fails:u:{user_id}"

    def failed_codes_of_device(self, device_id: str) -> str:
        """The same for a device; a device's key lives in the bucket its own id hashes to."""
        return f"{self.tag}:fails:d:{device_id}"

    def idempotency(self, scope: str, key: str) -> str:
        """A code redeem's Idempotency-Key record (scoped to the user)."""
        return f"{self.tag}:idem:{idempotency_digest(scope, key)}"

    @property
    def no_idempotency(self) -> str:
        return f"{self.tag}:idem:-"


def order_field(user_id: str, order_id: str) -> str:
    """An order's field in its bucket's ``orders`` hash: orders are the user's (``/`` is in neither id)."""
    return f"{user_id}/{order_id}"


@dataclass(frozen=True, slots=True)
class CodeKeys(Partition):
    @property
    def codes(self) -> str:
        """Code hash -> its batch (and, once redeemed, who redeemed it and the answer)."""
        return f"{self.tag}:codes"

    @property
    def batches(self) -> str:
        """Batch id -> what redeeming its codes needs: activity, window copied at creation, pack."""
        return f"{self.tag}:batches"

    @property
    def counters(self) -> str:
        """Activity id -> codes of it redeemed from this bucket."""
        return f"{self.tag}:counters"


@dataclass(frozen=True, slots=True)
class BlocklistKeys(Partition):
    tag: str = "{blocklist}"

    @property
    def entries(self) -> str:
        return f"{self.tag}:entries"

    @property
    def users(self) -> str:
        return f"{self.tag}:users"

    @property
    def devices(self) -> str:
        return f"{self.tag}:devices"

    @property
    def version(self) -> str:
        return f"{self.tag}:version"


BLOCKLIST = BlocklistKeys()
# The lives (run id / replication id) of the Redis primaries a process last found level with the ledger
# (ledger_check): a process that cannot reach the ledger and finds the same lives may open its fence (within one
# life a server loses nothing it acknowledged). Overwritten by each check that passes: one small string.
FENCE_CHECKED = "claimgate:fence:checked"


class KeySpace:
    """Maps ids to partitions for one deployment (bucket counts are fixed per deployment)."""

    def __init__(self, wallet_buckets: int, code_buckets: int) -> None:
        self.wallet_buckets = wallet_buckets
        self.code_buckets = code_buckets
        # Made once: every claim, checkout and code redeem names a wallet (a frozen value, safe to share).
        self._wallets = [self.wallet_of_bucket(n) for n in range(wallet_buckets)]

    @staticmethod
    def activity(activity_id: str) -> ActivityKeys:
        return ActivityKeys(f"{ACTIVITY_TAG_PREFIX}{activity_id}}}")

    def wallet_bucket(self, user_id: str) -> int:
        return stable_bucket(user_id, self.wallet_buckets)

    def wallet(self, user_id: str) -> WalletKeys:
        return self._wallets[self.wallet_bucket(user_id)]

    @staticmethod
    def wallet_of_bucket(bucket: int) -> WalletKeys:
        return WalletKeys(f"{{w:{bucket}}}")

    @staticmethod
    def code_of_bucket(bucket: int) -> CodeKeys:
        return CodeKeys(f"{{c:{bucket}}}")

    def wallet_partitions(self) -> list[Partition]:
        """Wallet buckets: a fixed set per deployment, each with its own stream."""
        return [self.wallet_of_bucket(n) for n in range(self.wallet_buckets)]

    def code_bucket(self, code_hash: str) -> int:
        """From the code's keyed hash (already uniform): its first 32 bits."""
        return int(code_hash[:8], 16) % self.code_buckets

    def code(self, code_hash: str) -> CodeKeys:
        return self.code_of_bucket(self.code_bucket(code_hash))

    def code_partitions(self) -> list[Partition]:
        return [self.code_of_bucket(n) for n in range(self.code_buckets)]


ACTIVITY_TAG_PREFIX = "{a:"


def activity_of_partition(partition: str) -> str:
    """``{a:X}`` -> ``X``."""
    if not (partition.startswith(ACTIVITY_TAG_PREFIX) and partition.endswith("}")):
        raise ValueError(f"not an activity partition: {partition!r}")
    return partition[len(ACTIVITY_TAG_PREFIX) : -1]


def is_activity_stream(stream: str) -> bool:
    """An activity partition's stream (``{a:X}:events``: claims and operators' changes), not a wallet's, a code
    bucket's or the blocklist's."""
    return stream.startswith(ACTIVITY_TAG_PREFIX) and stream.endswith(EVENTS_SUFFIX)


def partition_of_stream(stream: str) -> str:
    """``{a:X}:events`` -> ``{a:X}``."""
    if not stream.endswith(EVENTS_SUFFIX):
        raise ValueError(f"not an event stream: {stream!r}")
    return stream[: -len(EVENTS_SUFFIX)]


# Every key's retention (design.md "Retention": Redis is the hot set): a key no row matches fails
# tests/lua/test_key_retention.py; docs/keys.md shows the table (tests/unit/test_keys_doc.py keeps them equal).


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
    Retention("{w:*}:counters", "hash", f"3 fields per activity with checkouts in the bucket, each {_ACT}"),
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
    Retention("{c:*}:counters", "hash", f"activity id -> codes redeemed from the bucket; each {_ACT}"),
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

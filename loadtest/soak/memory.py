"""Redis's memory for the soak: ``used_memory`` once lazy frees are done, and what the keys Redis expires by
itself (``EX``: idempotency records, attempt windows) hold, counted apart (they follow Redis's clock, not the one
the soak moves)."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from gateway.key_retention import retention_of
from loadtest.bench.backlog import settled_memory


@dataclass(frozen=True)
class Memory:
    used: int  # INFO used_memory, settled
    keys: int
    expiring_keys: int  # keys with a TTL (EX): Redis removes them at their time
    expiring_bytes: int  # MEMORY USAGE of those
    clients: int = 0  # mem_clients_normal: the connected clients' buffers, not data
    patterns: dict[str, list[int]] = field(default_factory=dict)  # key pattern -> [keys, MEMORY USAGE]
    stats: dict[str, int] = field(default_factory=dict)  # MEMORY STATS' figures (overheads, dataset, clients)

    @property
    def without_expiring(self) -> int:
        return self.used - self.expiring_bytes


def measure(url: str) -> Memory:
    """The single node's memory, and the keys with a TTL among its keys (SCAN, TTL, MEMORY USAGE). The server's
    statistics are reset first: each command ever called keeps a latency histogram (latency-tracking, bounded by
    the command table, never data), and the sweeps call commands the start had not."""
    client = redis.Redis.from_url(url)
    try:
        client.config_resetstat()
        expiring = expiring_bytes = keys = 0
        patterns: dict[str, list[int]] = {}
        for key in client.scan_iter(count=1000):
            keys += 1
            size = int(client.memory_usage(key, samples=0) or 0)
            rows = retention_of(key.decode())
            counted = patterns.setdefault(rows[0].pattern if len(rows) == 1 else "(no single row)", [0, 0])
            counted[0] += 1
            counted[1] += size
            if int(client.ttl(key)) > 0:
                expiring += 1
                expiring_bytes += size
        used = settled_memory(client)
        clients = int(str(client.info("memory").get("mem_clients_normal", 0)))
        figures = {k: int(v) for k, v in client.memory_stats().items() if isinstance(v, int)}
        figures.update({k: int(v) for k, v in client.info("memory").items() if isinstance(v, int)})
        return Memory(used, keys, expiring, expiring_bytes, clients, patterns, figures)
    finally:
        client.close()


def quick(url: str) -> dict[str, int]:
    """used_memory (settled) and MEMORY STATS' dataset and overhead, without reading every key."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.memory_stats()
        found = {
            "used": settled_memory(client),
            "dataset": int(stats["dataset.bytes"]),
            "overhead": int(stats["overhead.total"]),
            "keys": int(stats["keys.count"]),
        }
        if found["keys"] <= 20_000:
            found["in_keys"] = sum(
                int(client.memory_usage(k, samples=0) or 0) for k in client.scan_iter(count=1000)
            )
        return found
    finally:
        client.close()

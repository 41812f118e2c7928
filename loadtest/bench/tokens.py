"""User tokens for the load, minted with ``gateway.tokens.mint_user_token`` (one user and one device each) and
written one a line to a file the wrk script reads. Minting runs in a process pool (PyJWT costs ~50 µs a token)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from gateway.tokens import mint_user_token

CHUNK = 10_000


def user_id(n: int) -> str:
    return f"bu{n:07d}"


def device_id(n: int) -> str:
    return f"bd{n:07d}"


def _mint(job: tuple[str, int, int, int]) -> list[str]:
    secret, start, stop, ttl = job
    return [mint_user_token(secret, user_id(n), device_id(n), ttl_seconds=ttl) for n in range(start, stop)]


class TokenFile:
    """Tokens of users 0..count-1 in ``path``; ``grow_to`` appends more."""

    def __init__(self, path: Path, secret: str, ttl_seconds: int) -> None:
        self.path, self.secret, self.ttl = path, secret, ttl_seconds
        self.count = 0
        path.write_text("")

    def grow_to(self, count: int) -> int:
        """Mint users ``self.count .. count - 1``; returns how many were added."""
        if count <= self.count:
            return 0
        jobs = [
            (self.secret, start, min(start + CHUNK, count), self.ttl)
            for start in range(self.count, count, CHUNK)
        ]
        processes = max(1, min(len(jobs), len(os.sched_getaffinity(0))))
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            chunks = list(pool.map(_mint, jobs))
        with open(self.path, "a") as out:
            for chunk in chunks:
                out.write("\n".join(chunk))
                out.write("\n")
        added, self.count = count - self.count, count
        return added

    def first(self, count: int) -> Path:
        """A file of the first ``count`` tokens (the users a phase rotates over when it should reuse them)."""
        path = self.path.with_name(f"{self.path.stem}-first-{count}{self.path.suffix}")
        with open(self.path) as source, open(path, "w") as out:
            for n, line in enumerate(source):
                if n >= count:
                    break
                out.write(line)
        return path

"""Stream entries as the scripts write them, decoded into typed events."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from gateway.keys import partition_of_stream


class AnsweredCoupon(msgspec.Struct):
    coupon_id: str
    template_id: str
    valid_from: int
    valid_until: int


class Answer(msgspec.Struct):
    claim_id: str
    coupons: list[AnsweredCoupon]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry, still raw: what gets acknowledged, dead-lettered or recorded as a conflict."""

    stream: str
    entry_id: str
    fields: dict[str, str]

    @property
    def key(self) -> tuple[str, str]:
        """Unique per entry (an entry id is unique only within its stream)."""
        return (self.stream, self.entry_id)

    @property
    def partition(self) -> str:
        return partition_of_stream(self.stream)

    @property
    def type(self) -> str:
        return self.fields.get("type", "")

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])


def decode_answer(raw: str) -> Answer:
    return msgspec.json.decode(raw, type=Answer)

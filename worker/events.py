"""Stream entries as the worker reads them: the raw fields (what gets acknowledged, dead-lettered, held or
recorded as a conflict) and, decoded once on first use, the event they carry (gateway/events.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway import events
from gateway.keys import partition_of_stream


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry, still raw."""

    stream: str
    entry_id: str
    fields: dict[str, str]
    _event: events.Event | None = field(default=None, compare=False, repr=False)

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
    def event(self) -> events.Event:
        """The event, decoded against the schema on first use; raises ``msgspec.ValidationError`` when the
        fields do not fit it."""
        decoded = self._event
        if decoded is None:
            decoded = events.decode(self.fields)
            object.__setattr__(self, "_event", decoded)  # a cache: the entry itself does not change
        return decoded

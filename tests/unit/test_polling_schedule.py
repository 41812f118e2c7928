"""The worker's polling schedule (worker/polling.py), on its own with moved clocks: which streams each round
reads, from where, and when a quiet stream's turn comes; take-overs, trims and the idle pause by stream."""

from __future__ import annotations

from gateway.catalog.store import LIVE_LEAD_SECONDS, PolledStream
from worker.polling import BUSY_SECONDS, IDLE_PAUSE_MAX_SECONDS, NEW, PENDING, Schedule

NOW = 1_800_000_000.0  # the wall clock (windows)
QUIET = 2.0
AUTOCLAIM = 15.0

WALLET = PolledStream("{w:0}:events")  # a fixed stream: no window
OPEN = PolledStream("{a:open}:events", int(NOW) - 100, int(NOW) + 100)
SOON = PolledStream("{a:soon}:events", int(NOW) + LIVE_LEAD_SECONDS - 1, int(NOW) + 1000)
LATER = PolledStream("{a:later}:events", int(NOW) + LIVE_LEAD_SECONDS + 1, int(NOW) + 1000)
PAST = PolledStream("{a:past}:events", int(NOW) - 1000, int(NOW))
ENDED = PolledStream("{a:ended}:events", int(NOW) - 100, int(NOW) + 100, ended=True)
ALL = [WALLET, OPEN, SOON, LATER, PAST, ENDED]


def settled(streams: list[PolledStream] = ALL, mono: float = 0.0) -> Schedule:
    """A schedule past its first round: every stream read once from 0 (nothing pending) and once from >."""
    plan = Schedule(QUIET, AUTOCLAIM)
    plan.update(streams, NOW, mono)
    reads = plan.reads(mono)
    plan.read(reads, {}, mono)
    plan.read(plan.reads(mono), {}, mono)
    return plan


def new_reads(reads: list[tuple[str, str]]) -> set[str]:
    return {stream for stream, start in reads if start == NEW}


def test_live_is_a_fixed_stream_or_a_window_open_or_opening_within_a_minute_and_not_ended() -> None:
    assert {s.stream for s in ALL if s.live(NOW)} == {WALLET.stream, OPEN.stream, SOON.stream}
    assert not PAST.live(NOW) and PAST.live(NOW - 1)  # ends_at itself is outside the window


def test_a_new_stream_is_read_from_0_first_then_from_the_start_of_what_is_new() -> None:
    plan = Schedule(QUIET, AUTOCLAIM)
    assert plan.update(ALL, NOW, 0.0) == [s.stream for s in ALL]
    first = plan.reads(0.0)
    assert {stream for stream, start in first if start == PENDING} == {s.stream for s in ALL}
    assert plan.read(first, {}, 0.0)  # each pending read found nothing: its mark is cleared
    # The next round (at once) reads every new stream from ">", quiet ones included, though their turn was taken.
    assert new_reads(plan.reads(0.0)) == {s.stream for s in ALL}


def test_a_quiet_stream_is_read_every_quiet_seconds_a_live_one_every_round() -> None:
    plan = settled()
    live = {WALLET.stream, OPEN.stream, SOON.stream}
    counts: dict[str, int] = {}
    for tick in range(1, 41):  # 4 s of rounds every 0.1 s
        for stream in new_reads(plan.reads(tick / 10)):
            counts[stream] = counts.get(stream, 0) + 1
    assert all(counts[stream] == 40 for stream in live)
    assert {counts.get(s.stream) for s in (LATER, PAST, ENDED)} == {2}  # at 2.0 s and 4.0 s


def test_a_stream_that_returned_entries_is_live_until_it_stays_empty_long_enough() -> None:
    plan = settled()
    plan.read([(PAST.stream, NEW)], {PAST.stream: ["an entry"]}, 5.0)
    assert PAST.stream in new_reads(plan.reads(5.1))
    plan.update(ALL, NOW, 5.0 + BUSY_SECONDS - 0.1)  # the refresh sorts again: still busy enough
    assert PAST.stream in plan.live
    plan.update(ALL, NOW, 5.0 + BUSY_SECONDS)
    assert PAST.stream not in plan.live


def test_a_window_opening_makes_its_stream_live_from_the_next_refresh() -> None:
    plan = settled()
    assert LATER.stream not in plan.live
    plan.update(ALL, NOW + 2, 1.0)
    assert LATER.stream in plan.live


def test_pending_reads_cover_every_suspect_stream_quiet_or_not_until_one_finds_nothing() -> None:
    plan = settled()
    plan.suspect([ENDED.stream, OPEN.stream])
    reads = plan.reads(0.5)  # quiet streams are not due at 0.5 s
    assert (ENDED.stream, PENDING) in reads and (OPEN.stream, PENDING) in reads
    assert (OPEN.stream, NEW) not in reads  # one read per stream a round: from 0 while suspect
    plan.read(reads, {ENDED.stream: ["still pending"]}, 0.5)
    assert plan.ours == {ENDED.stream}
    plan.read(plan.reads(0.6), {}, 0.6)
    assert not plan.ours


def test_a_retired_stream_leaves_the_plan_and_a_revived_one_comes_back_read_from_0() -> None:
    plan = settled()
    plan.suspect([PAST.stream])
    kept = [s for s in ALL if s is not PAST]
    assert plan.update(kept, NOW, 1.0) == []
    assert PAST.stream not in {stream for stream, _ in plan.reads(10.0)}  # not even at the quiet turn
    assert not plan.ours
    assert plan.update(ALL, NOW, 11.0) == [PAST.stream]
    assert (PAST.stream, PENDING) in plan.reads(11.0)


def test_take_overs_run_on_live_streams_every_interval_on_quiet_ones_no_more_often_than_they_are_read() -> (
    None
):
    plan = Schedule(QUIET, 1.0)  # take-overs due more often than quiet reads
    plan.update(ALL, NOW, 0.0)
    quiet = {LATER.stream, PAST.stream, ENDED.stream}
    assert set(plan.autoclaims(0.0)) == {s.stream for s in ALL}
    assert set(plan.autoclaims(1.0)) == {s.stream for s in ALL} - quiet
    assert set(plan.autoclaims(2.0)) == {s.stream for s in ALL}
    assert plan.autoclaims(2.5) == []


def test_only_streams_with_entries_since_a_settled_trim_are_trimmed_again() -> None:
    plan = settled()
    assert plan.untrimmed == {s.stream for s in ALL}  # each trimmed once after a start
    for stream in list(plan.untrimmed):
        plan.trimmed(stream, settled=stream != OPEN.stream)  # OPEN still had entries pending
    assert plan.untrimmed == {OPEN.stream}
    plan.read([(WALLET.stream, NEW)], {WALLET.stream: ["new"]}, 1.0)
    assert plan.untrimmed == {OPEN.stream, WALLET.stream}


def test_an_idle_lane_pauses_longer_and_longer_and_not_at_all_once_it_finds_entries() -> None:
    plan = Schedule(QUIET, AUTOCLAIM)
    pauses = [plan.pause(0, 0.05) for _ in range(6)]
    assert pauses == [0.05, 0.1, 0.2, IDLE_PAUSE_MAX_SECONDS, IDLE_PAUSE_MAX_SECONDS, IDLE_PAUSE_MAX_SECONDS]
    assert plan.pause(3, 0.05) == 0.0
    assert plan.pause(0, 0.05) == 0.05
    assert Schedule(QUIET, AUTOCLAIM).pause(0, 1.0) == 1.0  # a configured pause above the cap is kept

"""Approximate-time pairing of N message streams by timestamp (ROS-free; used by the node and the bag tools).

Why our own: ROS 2 ``message_filters`` cannot be installed here (no PyPI or Debian build of the ROS 2 package), and
the offline tools must pair bag messages without ROS anyway. So the policy lives in one small module that works on
explicit integer-nanosecond stamps; the node feeds it ``header.stamp`` and the extractor feeds it bag messages.

Semantics (those of ROS 2 message_filters' Python ``ApproximateTimeSynchronizer(fs, queue_size, slop)``, checked
against its source, plus two documented departures):

* one queue per input, keyed by stamp, capped at ``queue_size`` (the oldest stamp is evicted first); a second message
  with a stamp already queued replaces the first;
* a set is only formed when a message arrives, and always contains that message: from every other queue take the
  stamps within ``slop`` of the new one; among all combinations whose spread ``max(stamps) - min(stamps)`` is within
  ``slop``, emit the best one (smallest spread, then smallest total distance to the new stamp, then the older
  stamps) and remove it from the queues. This is greedy, like message_filters: a set is emitted as soon as it exists,
  a closer message that arrives later is not waited for;
* **bound**: ``spread <= slop`` (inclusive). message_filters keeps candidates with ``|dt| <= slop`` but then emits only
  sets with ``spread < slop`` (strict), so there ``slop=0`` never matches even identical stamps. We use ``<=`` for
  both, so ``slop=0`` means exact-stamp matching (TimeSynchronizer); the two differ only at exactly ``slop``.
* **no backwards pairs** (``drop_older=True``, the default; message_filters has no such rule): after a match, every
  queued entry older than the matched stamp of its input is dropped (it can never be part of a later, newer set),
  and a message whose stamp is not newer than its input's last matched stamp is dropped on arrival. Matched stamps
  of every input therefore strictly increase, so outputs never go back in time. A stamp more than
  ``jump_reset`` seconds older than the last match is taken as a clock jump (a bag looping, sim time restarting):
  the synchronizer resets instead of dropping everything from then on. ``drop_older=False`` restores
  message_filters' behaviour (late and out-of-order messages may still pair).

Every message that leaves a queue unmatched is counted in ``dropped`` (per input, with the reason), for diagnostics.
``add`` is thread-safe; the callback runs outside the lock, in the thread that called ``add``.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

__all__ = ["ApproximateTimeSync", "SyncMatch", "SyncStats", "iter_matches", "pair_streams", "DROP_REASONS"]

NS_PER_S = 1_000_000_000
DROP_REASONS = ("evicted", "superseded", "late", "duplicate", "reset")


class SyncMatch(NamedTuple):
    stamps: tuple  # one stamp (ns) per input, in input order
    msgs: tuple  # one message per input, in input order
    spread_ns: int  # max(stamps) - min(stamps)


@dataclass
class SyncStats:
    """Snapshot of the counters (plain data, safe to read while the synchronizer keeps running)."""

    received: list  # messages offered per input
    dropped: list  # messages per input that left unmatched (sum over reasons)
    dropped_by_reason: dict  # reason -> per-input list; reasons: DROP_REASONS
    queued: list  # messages waiting per input
    matched: int = 0  # sets emitted
    resets: int = 0  # clock jumps handled
    last_spread_ns: int | None = None
    max_spread_ns: int | None = None
    mean_spread_ns: float | None = None


class ApproximateTimeSync:
    """Pairs messages from ``num_inputs`` streams whose stamps lie within ``slop`` seconds of each other.

    >>> sync = ApproximateTimeSync(num_inputs=2, queue_size=10, slop=0.05, callback=lambda rgb, x: ...)
    >>> sync.add(0, rgb_stamp_ns, rgb_msg)   # -> SyncMatch or None; the callback gets (rgb_msg, x_msg)
    >>> sync.add(1, x_stamp_ns, x_msg)
    """

    def __init__(self, num_inputs: int = 2, queue_size: int = 10, slop: float = 0.05,
                 callback: Callable[..., Any] | None = None, drop_older: bool = True,
                 jump_reset: float | None = 1.0) -> None:
        if num_inputs < 2:
            raise ValueError(f"num_inputs must be >= 2, got {num_inputs}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not slop >= 0:  # also rejects NaN
            raise ValueError(f"slop must be >= 0 seconds, got {slop}")
        self.num_inputs = int(num_inputs)
        self.queue_size = int(queue_size)
        self.slop = float(slop)
        self.slop_ns = int(round(self.slop * NS_PER_S))
        self.callback = callback
        self.drop_older = bool(drop_older)
        self.jump_reset_ns = None if jump_reset is None else int(round(float(jump_reset) * NS_PER_S))
        self._lock = threading.Lock()
        self._queues: list[dict[int, Any]] = [{} for _ in range(self.num_inputs)]
        self._last: list[int | None] = [None] * self.num_inputs
        self._received = [0] * self.num_inputs
        self._dropped = {r: [0] * self.num_inputs for r in DROP_REASONS}
        self._matched = 0
        self._resets = 0
        self._spread_sum = 0
        self._spread_max: int | None = None
        self._spread_last: int | None = None

    # -- public API ------------------------------------------------------------------------------------------
    def add(self, index: int, stamp_ns: int, msg: Any) -> SyncMatch | None:
        """Offer ``msg`` with stamp ``stamp_ns`` (integer ns) on input ``index``; returns the set it completed."""
        if not 0 <= index < self.num_inputs:
            raise IndexError(f"input index {index} out of range for {self.num_inputs} inputs")
        stamp_ns = int(stamp_ns)
        with self._lock:
            match = self._add_locked(index, stamp_ns, msg)
        if match is not None and self.callback is not None:
            self.callback(*match.msgs)
        return match

    def reset(self) -> None:
        """Forget queued messages and the last matched stamps (counters are kept)."""
        with self._lock:
            self._reset_locked()

    def stats(self) -> SyncStats:
        with self._lock:
            by_reason = {r: list(v) for r, v in self._dropped.items()}
            return SyncStats(
                received=list(self._received),
                dropped=[sum(by_reason[r][i] for r in DROP_REASONS) for i in range(self.num_inputs)],
                dropped_by_reason=by_reason,
                queued=[len(q) for q in self._queues],
                matched=self._matched,
                resets=self._resets,
                last_spread_ns=self._spread_last,
                max_spread_ns=self._spread_max,
                mean_spread_ns=(self._spread_sum / self._matched) if self._matched else None,
            )

    @property
    def matched(self) -> int:
        return self._matched

    @property
    def dropped(self) -> int:
        """Total unmatched messages dropped over all inputs."""
        with self._lock:
            return sum(sum(v) for v in self._dropped.values())

    # -- internals (called with the lock held) ---------------------------------------------------------------
    def _reset_locked(self) -> None:
        for i, q in enumerate(self._queues):
            self._dropped["reset"][i] += len(q)
            q.clear()
        self._last = [None] * self.num_inputs

    def _add_locked(self, index: int, stamp: int, msg: Any) -> SyncMatch | None:
        self._received[index] += 1
        last = self._last[index]
        if self.drop_older and last is not None and stamp <= last:
            if self.jump_reset_ns is not None and last - stamp > self.jump_reset_ns:
                self._resets += 1
                self._reset_locked()
            else:
                self._dropped["late"][index] += 1
                return None
        queue = self._queues[index]
        if stamp in queue:
            self._dropped["duplicate"][index] += 1
        queue[stamp] = msg
        while len(queue) > self.queue_size:
            del queue[min(queue)]
            self._dropped["evicted"][index] += 1

        slop = self.slop_ns
        candidates = []
        for j, other in enumerate(self._queues):
            if j == index:
                candidates.append((stamp,))
                continue
            near = tuple(s for s in other if abs(s - stamp) <= slop)
            if not near:
                return None
            candidates.append(near)

        best_key, best = None, None
        for combo in itertools.product(*candidates):
            spread = max(combo) - min(combo)
            if spread > slop:
                continue
            key = (spread, sum(abs(s - stamp) for s in combo), combo)
            if best_key is None or key < best_key:
                best_key, best = key, combo
        if best is None:
            return None

        msgs = tuple(self._queues[j].pop(s) for j, s in enumerate(best))
        if self.drop_older:
            for j, s in enumerate(best):
                q = self._queues[j]
                older = [t for t in q if t < s]
                for t in older:
                    del q[t]
                self._dropped["superseded"][j] += len(older)
                self._last[j] = s
        spread = best_key[0]
        self._matched += 1
        self._spread_sum += spread
        self._spread_last = spread
        self._spread_max = spread if self._spread_max is None else max(self._spread_max, spread)
        return SyncMatch(stamps=tuple(best), msgs=msgs, spread_ns=spread)


def iter_matches(events: Iterable[tuple[int, int, Any]], num_inputs: int = 2, queue_size: int = 10,
                 slop: float = 0.05, drop_older: bool = True, sync: ApproximateTimeSync | None = None
                 ) -> Iterator[SyncMatch]:
    """Offline use: feed ``(input_index, stamp_ns, payload)`` events in arrival order, yield the sets as they form.

    Pass your own ``sync`` to read its ``stats()`` afterwards.
    """
    if sync is None:
        sync = ApproximateTimeSync(num_inputs, queue_size, slop, drop_older=drop_older)
    for index, stamp, payload in events:
        match = sync.add(index, stamp, payload)
        if match is not None:
            yield match


def pair_streams(stamps_a: Sequence[int], stamps_b: Sequence[int], slop: float, queue_size: int = 10,
                 arrival_a: Sequence[int] | None = None, arrival_b: Sequence[int] | None = None,
                 drop_older: bool = True) -> list[tuple[int, int]]:
    """Pair two stamp lists (integer ns) with the same policy as the node; returns ``(i, j)`` index pairs.

    Messages are fed in arrival order: ``arrival_a``/``arrival_b`` (e.g. bag receive times) when given, otherwise
    their stamps; ties go to stream a first.
    """
    arrival_a = stamps_a if arrival_a is None else arrival_a
    arrival_b = stamps_b if arrival_b is None else arrival_b
    if len(arrival_a) != len(stamps_a) or len(arrival_b) != len(stamps_b):
        raise ValueError("arrival times must have one entry per stamp")
    events = sorted(
        [(int(t), 0, i) for i, t in enumerate(arrival_a)] + [(int(t), 1, j) for j, t in enumerate(arrival_b)])
    stamps = (stamps_a, stamps_b)
    feed = ((stream, int(stamps[stream][k]), k) for _, stream, k in events)
    return [(m.msgs[0], m.msgs[1]) for m in iter_matches(feed, 2, queue_size, slop, drop_older)]

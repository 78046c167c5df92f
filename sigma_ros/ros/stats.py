"""Small thread-safe helpers behind the node's bounded-latency design and its diagnostics.

ROS-free (no rclpy import) so they are unit-tested and benchmarked without a ROS graph:

* :class:`LatestSlot` -- a one-item mailbox between the subscription callbacks and the inference worker. A new
  pair replaces an unread one (which is counted as dropped), so the worker always sees the newest pair and a slow
  model can never build a backlog.
* :class:`LatencyWindow` -- recent latency samples with p50/p95.
* :class:`RateMeter` -- events per second over a sliding time window.
* :class:`ErrorThrottle` -- at most one log line per key per period, with the count of suppressed repeats.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Callable, Deque, Dict, Hashable, Optional, Tuple


class LatestSlot:
    """Holds at most one item; ``put`` overwrites (and counts) an item the consumer has not taken yet."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Store ``item``; returns True when an older, unprocessed item was dropped to make room."""
        with self._cond:
            dropped = self._full
            if dropped:
                self.dropped += 1
            self._item, self._full = item, True
            self.put_count += 1
            self._cond.notify()
            return dropped

    def get(self, timeout: Optional[float] = None) -> Any:
        """Take the item, waiting up to ``timeout`` seconds; None on timeout or once closed."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if not self._full or self._closed:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wake and release any waiting consumer; later ``get`` calls return None."""
        with self._cond:
            self._closed = True
            self._item, self._full = None, False
            self._cond.notify_all()


def percentile(sorted_values, q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of an already sorted sequence; NaN when empty."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = (n - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


class LatencyWindow:
    """The last ``size`` samples (seconds) with percentile summaries; safe to use from several threads."""

    def __init__(self, size: int = 300) -> None:
        self._values: Deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(float(value))
            self.count += 1

    def summary(self) -> Dict[str, float]:
        """{'p50','p95','max','n'} over the window (NaN when empty)."""
        with self._lock:
            values = sorted(self._values)
        return {
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "max": values[-1] if values else math.nan,
            "n": float(len(values)),
        }


class RateMeter:
    """Events per second over the last ``window`` seconds (monotonic clock)."""

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._times: Deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._start = clock()
        self.count = 0

    def tick(self) -> None:
        with self._lock:
            now = self._clock()
            self._times.append(now)
            self.count += 1
            self._prune(now)

    def _prune(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()

    def rate(self) -> float:
        with self._lock:
            now = self._clock()
            self._prune(now)
            # Right after start-up the window is not full yet: divide by the time actually observed.
            span = min(self._window, max(now - self._start, 1e-3))
            return len(self._times) / span


class ErrorThrottle:
    """Decides whether a repeated error may be logged now: once per ``period`` seconds per key.

    ``check(key)`` returns None to suppress, or the number of repeats suppressed since the last line (so the
    logged message can say "(N similar suppressed)").
    """

    def __init__(self, period: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._period = period
        self._clock = clock
        self._state: Dict[Hashable, Tuple[float, int]] = {}
        self._lock = threading.Lock()

    def check(self, key: Hashable) -> Optional[int]:
        with self._lock:
            now = self._clock()
            last, suppressed = self._state.get(key, (-math.inf, 0))
            if now - last >= self._period:
                self._state[key] = (now, 0)
                return suppressed
            self._state[key] = (last, suppressed + 1)
            return None

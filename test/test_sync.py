"""sigma_ros.sync: the approximate-time policy's documented behaviour."""
from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from sigma_ros.sync import DROP_REASONS, ApproximateTimeSync, iter_matches, pair_streams

MS = 1_000_000
S = 1_000_000_000


def accounting_holds(sync: ApproximateTimeSync) -> bool:
    """Every message offered is matched, dropped (with a reason) or still queued."""
    st = sync.stats()
    return all(st.received[i] == st.matched + st.dropped[i] + st.queued[i] for i in range(sync.num_inputs))


def test_exact_stamps_pair_in_input_order_and_call_the_callback():
    got = []
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.0, callback=lambda a, b: got.append((a, b)))
    for k in range(5):
        assert sync.add(0, k * 100 * MS, f"rgb{k}") is None  # nothing to pair with yet
        m = sync.add(1, k * 100 * MS, f"x{k}")
        assert m is not None and m.stamps == (k * 100 * MS,) * 2 and m.spread_ns == 0
    assert got == [(f"rgb{k}", f"x{k}") for k in range(5)]
    st = sync.stats()
    assert st.matched == 5 and st.dropped == [0, 0] and st.queued == [0, 0]


def test_slop_zero_needs_identical_stamps():
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.0)
    sync.add(0, 1000, "a")
    assert sync.add(1, 1001, "b") is None
    assert sync.add(1, 1000, "b") is not None


@pytest.mark.parametrize("delta_ns,matches", [
    (0, True), (50 * MS - 1, True), (50 * MS, True), (50 * MS + 1, False), (-50 * MS, True), (-50 * MS - 1, False),
])
def test_slop_bound_is_inclusive(delta_ns, matches):
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.05)
    sync.add(0, 10 * S, "rgb")
    m = sync.add(1, 10 * S + delta_ns, "x")
    assert (m is not None) == matches
    if matches:
        assert m.spread_ns == abs(delta_ns) and m.msgs == ("rgb", "x")


def test_closest_candidate_wins_and_ties_take_the_older():
    sync = ApproximateTimeSync(2, queue_size=10, slop=0.05)
    for t in (100, 120, 133, 150):
        sync.add(0, t * MS, t)
    m = sync.add(1, 131 * MS, "x")
    assert m.msgs == (133, "x") and m.spread_ns == 2 * MS
    # 100 and 120 are older than the match: dropped (superseded), 150 is kept for later.
    st = sync.stats()
    assert st.dropped_by_reason["superseded"] == [2, 0] and st.queued == [1, 0]

    tie = ApproximateTimeSync(2, queue_size=10, slop=0.05)
    tie.add(0, 90 * MS, "older")
    tie.add(0, 110 * MS, "newer")
    assert tie.add(1, 100 * MS, "x").msgs == ("older", "x")
    assert tie.stats().queued == [1, 0]


def test_queue_eviction_drops_the_oldest():
    sync = ApproximateTimeSync(2, queue_size=3, slop=0.01)
    for k in range(5):  # stamps 0..4 s; queue keeps 2, 3, 4
        sync.add(0, k * S, k)
    st = sync.stats()
    assert st.dropped_by_reason["evicted"] == [2, 0] and st.queued == [3, 0]
    assert sync.add(1, 0, "x0") is None  # its partner was evicted
    assert sync.add(1, 2 * S, "x2").msgs == (2, "x2")
    assert accounting_holds(sync)


def test_duplicate_stamp_replaces_the_queued_message():
    sync = ApproximateTimeSync(2, queue_size=3, slop=0.01)
    sync.add(0, 5 * S, "first")
    sync.add(0, 5 * S, "second")
    assert sync.add(1, 5 * S, "x").msgs == ("second", "x")
    assert sync.stats().dropped_by_reason["duplicate"] == [1, 0]
    assert accounting_holds(sync)


def test_out_of_order_arrival_like_message_filters_when_drop_older_is_off():
    # message_filters' own regression test: one stream complete, the other scrambled; all pairs recombine.
    rnd = random.Random(0)
    for n in range(1, 10):
        stamps = [t * S for t in range(n)]
        sync = ApproximateTimeSync(2, queue_size=n, slop=0.1, drop_older=False)
        got = []
        sync.callback = lambda a, b: got.append((a, b))
        for t in rnd.sample(stamps, n):
            sync.add(0, t, ("a", t))
        assert got == []
        for t in rnd.sample(stamps, n):
            sync.add(1, t, ("b", t))
        assert sorted(got) == [(("a", t), ("b", t)) for t in stamps]


def test_out_of_order_arrival_never_pairs_backwards_with_drop_older():
    rnd = random.Random(1)
    stamps = [t * 100 * MS for t in range(30)]
    order_a, order_b = stamps[:], stamps[:]
    # local shuffles (messages swapped with a neighbour), as a network reorders them
    for order in (order_a, order_b):
        for k in range(0, len(order) - 1, 3):
            if rnd.random() < 0.7:
                order[k], order[k + 1] = order[k + 1], order[k]
    events = []
    for ta, tb in zip(order_a, order_b):
        events += [(0, ta, ta), (1, tb, tb)]
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.01)
    matches = list(iter_matches(events, sync=sync))
    got = [m.stamps for m in matches]
    assert all(a == b for a, b in got)  # only correct pairs
    firsts = [a for a, _ in got]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)  # strictly increasing
    st = sync.stats()
    assert st.dropped_by_reason["late"][0] + st.dropped_by_reason["late"][1] > 0
    assert len(got) >= 20 and accounting_holds(sync)


@pytest.mark.parametrize("n,queue_size,expect", [(10, 10, 10), (15, 10, 10)])
def test_bursts(n, queue_size, expect):
    sync = ApproximateTimeSync(2, queue_size=queue_size, slop=0.005)
    for k in range(n):
        sync.add(0, k * 33 * MS, k)
    got = [sync.add(1, k * 33 * MS + MS, k) for k in range(n)]
    matched = [m.msgs for m in got if m is not None]
    assert len(matched) == expect
    assert all(a == b for a, b in matched)
    assert matched[0][0] == n - expect  # the oldest ones were evicted
    assert accounting_holds(sync)


def test_different_rates_30hz_and_10hz_with_jitter():
    rng = np.random.default_rng(3)
    dur = 10.0
    rgb = (np.arange(0, dur, 1 / 30) * S + rng.normal(0, 2 * MS, int(np.ceil(dur * 30)))).astype(np.int64)
    th = (np.arange(0, dur, 1 / 10) * S + 7 * MS + rng.normal(0, 2 * MS, int(np.ceil(dur * 10)))).astype(np.int64)
    # thermal arrives 40 ms after its stamp, rgb 5 ms after
    pairs = pair_streams(rgb, th, slop=0.02, queue_size=10, arrival_a=rgb + 5 * MS, arrival_b=th + 40 * MS)
    assert len(pairs) == len(th)  # every thermal frame finds an rgb frame
    i_idx = [i for i, _ in pairs]
    assert i_idx == sorted(i_idx) and [j for _, j in pairs] == list(range(len(th)))
    for i, j in pairs:
        # the nearest rgb frame was chosen
        assert np.argmin(np.abs(rgb - th[j])) == i
        assert abs(int(rgb[i]) - int(th[j])) <= 20 * MS


def test_greedy_like_message_filters_a_later_closer_message_is_not_awaited():
    sync = ApproximateTimeSync(2, queue_size=10, slop=0.05)
    sync.add(0, 100 * MS, "a100")
    assert sync.add(1, 130 * MS, "x").msgs == ("a100", "x")
    assert sync.add(0, 131 * MS, "a131") is None  # x is gone


def test_three_inputs_pick_the_tightest_set():
    sync = ApproximateTimeSync(3, queue_size=10, slop=0.03)
    sync.add(0, 1000 * MS, "a")
    sync.add(1, 980 * MS, "b980")
    sync.add(1, 1010 * MS, "b1010")
    assert sync.add(2, 1040 * MS, "c_far") is None  # no b within 30 ms of both a and c: spread would be 60 ms
    m = sync.add(2, 1005 * MS, "c")
    assert m.msgs == ("a", "b1010", "c") and m.spread_ns == 10 * MS
    assert accounting_holds(sync)


def test_clock_jump_back_resets_instead_of_dropping_forever():
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.01, jump_reset=1.0)
    for k in range(5):
        sync.add(0, 100 * S + k * S, k)
        sync.add(1, 100 * S + k * S, k)
    assert sync.add(0, 104 * S - 500 * MS, "late") is None  # 0.5 s back: a late message
    assert sync.stats().dropped_by_reason["late"] == [1, 0]
    # the bag loops: stamps restart 104 s back
    sync.add(0, 0, "r0")
    assert sync.add(1, 0, "t0").msgs == ("r0", "t0")
    st = sync.stats()
    assert st.resets == 1 and st.matched == 6
    assert accounting_holds(sync)


def test_concurrent_adds_keep_the_books():
    sync = ApproximateTimeSync(2, queue_size=10, slop=0.004)
    got = []
    lock = threading.Lock()

    def cb(a, b):
        with lock:
            got.append((a, b))

    sync.callback = cb

    def feed(index, jitter):
        for k in range(2000):
            sync.add(index, k * 10 * MS + jitter, (index, k))

    threads = [threading.Thread(target=feed, args=(0, 0)), threading.Thread(target=feed, args=(1, MS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = sync.stats()
    assert st.received == [2000, 2000] and st.matched == len(got) > 0
    assert all(a[1] == b[1] for a, b in got)  # 10 ms apart stamps never cross-pair with a 4 ms slop
    assert accounting_holds(sync)
    assert set(st.dropped_by_reason) == set(DROP_REASONS)


def test_stats_spreads_and_totals():
    sync = ApproximateTimeSync(2, queue_size=3, slop=0.1)
    for k, d in enumerate((10, 30, 20)):
        sync.add(0, k * S, k)
        sync.add(1, k * S + d * MS, k)
    st = sync.stats()
    assert st.matched == sync.matched == 3 and sync.dropped == 0
    assert (st.last_spread_ns, st.max_spread_ns, st.mean_spread_ns) == (20 * MS, 30 * MS, 20 * MS)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_inputs"):
        ApproximateTimeSync(1)
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimeSync(2, queue_size=0)
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSync(2, slop=-0.1)
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSync(2, slop=float("nan"))
    with pytest.raises(IndexError):
        ApproximateTimeSync(2).add(2, 0, None)
    with pytest.raises(ValueError, match="one entry per stamp"):
        pair_streams([1, 2], [1], 0.1, arrival_a=[1])

"""ROS-free parts of the node: latest-pair slot, latency/rate statistics, error throttle, parameter validation,
output rendering and the diagnostics assessment."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from sigma_ros.postprocess import colorize, overlay, voc_palette
from sigma_ros.ros import diagnostics
from sigma_ros.ros.outputs import label_encoding, render_outputs, to_messages
from sigma_ros.ros.params import SettingsError, defaults, parse_input_size, validate
from sigma_ros.ros.stats import ErrorThrottle, LatencyWindow, LatestSlot, RateMeter, percentile


# ------------------------------------------------------------------ LatestSlot
def test_latest_slot_keeps_only_the_newest_and_counts_drops():
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.get(timeout=0) == 3
    assert slot.get(timeout=0) is None  # taken: nothing queued behind it
    assert (slot.put_count, slot.dropped) == (3, 2)


def test_latest_slot_with_slow_consumer_never_backlogs():
    slot, seen = LatestSlot(), []

    def consumer():
        while True:
            item = slot.get(timeout=1.0)
            if item is None:
                return
            seen.append(item)
            time.sleep(0.02)  # slower than the producer

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(100):
        slot.put(i)
        time.sleep(0.002)
    time.sleep(0.1)
    slot.close()
    t.join(2)
    assert seen == sorted(seen) and seen[-1] == 99  # in order, and the last pair is always processed
    assert len(seen) < 50 and slot.dropped == 100 - len(seen)


def test_latest_slot_close_wakes_consumer():
    slot = LatestSlot()
    out = []
    t = threading.Thread(target=lambda: out.append(slot.get(timeout=10)))
    t.start()
    time.sleep(0.05)
    slot.close()
    t.join(1)
    assert not t.is_alive() and out == [None]
    slot.put(5)
    assert slot.get(timeout=0) is None


# ------------------------------------------------------------------ statistics
def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        v = np.sort(rng.random(n))
        for q in (0, 50, 95, 100):
            assert percentile(v, q) == pytest.approx(np.percentile(v, q))
    assert math.isnan(percentile([], 50))


def test_latency_window_is_bounded_and_summarises_recent_samples():
    w = LatencyWindow(size=10)
    for v in range(100):
        w.add(v)
    s = w.summary()
    assert s["n"] == 10 and s["max"] == 99 and s["p50"] == pytest.approx(94.5) and w.count == 100
    assert math.isnan(LatencyWindow().summary()["p95"])


def test_rate_meter_with_fake_clock():
    now = [0.0]
    meter = RateMeter(window=2.0, clock=lambda: now[0])
    for _ in range(40):  # 20 Hz for 2 s
        now[0] += 0.05
        meter.tick()
    assert meter.rate() == pytest.approx(20.0, rel=0.05)
    now[0] += 10.0
    assert meter.rate() == 0.0


def test_error_throttle_reports_suppressed_count():
    now = [0.0]
    th = ErrorThrottle(period=5.0, clock=lambda: now[0])
    assert th.check("a") == 0
    assert th.check("a") is None and th.check("a") is None
    assert th.check("b") == 0  # another key is independent
    now[0] = 5.0
    assert th.check("a") == 2


# ------------------------------------------------------------------ parameters
def _values(**kw):
    v = defaults()
    v["checkpoint"] = "/m.pt"
    v.update(kw)
    return v


def test_validate_defaults_and_types():
    s = validate(_values())
    assert (s.device, s.precision, s.input_size, s.modality) == ("auto", "auto", None, "")  # '' = class config's
    assert (s.slop, s.queue_size, s.depth_range, s.fast_path) == (0.05, 10, (0.0, 10.0), True)
    s = validate(_values(input_size="640x480", device="CPU", variant="tiny", depth_range=[0.3, 6]))
    assert s.input_size == (640, 480) and s.device == "cpu" and s.variant == "tiny" and s.depth_range == (0.3, 6.0)


@pytest.mark.parametrize("kw, message", [
    ({"checkpoint": ""}, "'checkpoint' is required"),
    ({"device": "gpu"}, "'device' must be one of auto|cuda|cpu"),
    ({"precision": "int8"}, "'precision'"),
    ({"variant": "huge"}, "'variant'"),
    ({"modality": "lidar"}, "'modality'"),
    ({"input_size": "640*480"}, "'input_size'"),
    ({"input_size": "0x480"}, "'input_size'"),
    ({"overlay_alpha": 1.5}, "'overlay_alpha'"),
    ({"sync.slop": -0.1}, "'sync.slop'"),
    ({"sync.queue_size": 0}, "'sync.queue_size'"),
    ({"depth_range": [5.0, 1.0]}, "'depth_range'"),
    ({"depth_range": [0.0]}, "'depth_range'"),
    ({"depth_range": [0.0, float("nan")]}, "'depth_range'"),
])
def test_validate_rejects_with_a_message_naming_the_parameter(kw, message):
    with pytest.raises(SettingsError, match=message):
        validate(_values(**kw))


def test_parse_input_size():
    assert parse_input_size("native") is None and parse_input_size(" 320 X 240 ") == (320, 240)


# ------------------------------------------------------------------ outputs
def test_render_outputs_content_and_encodings():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 9, (6, 8))
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    pal = voc_palette(9)
    out = render_outputs(labels, rgb, pal, alpha=0.3, num_classes=9, want_color=True, want_overlay=True,
                         confidence=np.full((6, 8), 0.5))
    assert {k: v[1] for k, v in out.items()} == {"label": "mono8", "color": "rgb8", "overlay": "rgb8",
                                                "confidence": "32FC1"}
    np.testing.assert_array_equal(out["label"][0], labels)
    assert out["label"][0].dtype == np.uint8 and out["confidence"][0].dtype == np.float32
    np.testing.assert_array_equal(out["color"][0], colorize(labels, pal))
    np.testing.assert_array_equal(out["overlay"][0], overlay(rgb, labels, pal, 0.3))
    only = render_outputs(labels, rgb, pal, alpha=0.3, num_classes=9, want_color=False, want_overlay=False)
    assert set(only) == {"label"}  # outputs nobody subscribes to are not computed


def test_labels_above_256_classes_are_16bit():
    assert label_encoding(256) == "mono8" and label_encoding(257) == "16UC1"
    labels = np.array([[0, 299], [256, 1]])
    out = render_outputs(labels, np.zeros((2, 2, 3), np.uint8), voc_palette(300), alpha=0.5, num_classes=300,
                         want_color=True, want_overlay=False)
    arr, enc = out["label"]
    assert enc == "16UC1" and arr.dtype == np.uint16 and arr.tolist() == [[0, 299], [256, 1]]
    np.testing.assert_array_equal(out["color"][0][0, 1], voc_palette(300)[299])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU"))])
@pytest.mark.parametrize("num_classes", [9, 300, 65536])
def test_render_outputs_from_device_tensors_gives_the_numpy_bytes(device, num_classes):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, num_classes, (6, 8))
    labels[0, 0] = num_classes - 1  # above 32767 for 65536 classes: the int16 transport must keep the bits
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    conf = rng.random((6, 8)).astype(np.float32)
    pal = voc_palette(min(num_classes, 300))
    for want_color, want_overlay, with_conf in ((True, True, True), (False, True, False), (True, False, False),
                                                (False, False, True)):
        kw = dict(alpha=0.3, num_classes=num_classes, want_color=want_color, want_overlay=want_overlay)
        if num_classes > len(pal) and (want_color or want_overlay):
            continue  # ids without a colour cannot be drawn (numpy raises as well)
        want = render_outputs(labels, rgb, pal, confidence=conf if with_conf else None, **kw)
        got = render_outputs(torch.from_numpy(labels).to(device), torch.from_numpy(rgb).to(device), pal,
                             confidence=torch.from_numpy(conf).to(device) if with_conf else None, **kw)
        assert list(got) == list(want)  # the same outputs, only those asked for
        for name, (arr, enc) in want.items():
            assert got[name][1] == enc and isinstance(got[name][0], np.ndarray)
            assert got[name][0].dtype == arr.dtype and np.array_equal(got[name][0], arr), name


def test_to_messages_builds_images_with_the_rgb_header():
    pytest.importorskip("sensor_msgs")
    from std_msgs.msg import Header

    from sigma_ros.image_codec import image_to_numpy

    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    labels = np.arange(12).reshape(3, 4) % 9
    out = render_outputs(labels, np.zeros((3, 4, 3), np.uint8), voc_palette(9), alpha=0.5, num_classes=9,
                         want_color=True, want_overlay=False)
    msgs = to_messages(out, header)
    for name, msg in msgs.items():
        assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("cam", 12, 345)
        assert (msg.height, msg.width) == (3, 4)
    np.testing.assert_array_equal(image_to_numpy(msgs["label"]), labels)
    np.testing.assert_array_equal(image_to_numpy(msgs["color"]), colorize(labels, voc_palette(9)))


# ------------------------------------------------------------------ diagnostics assessment
def test_assess_levels():
    ok = diagnostics.Snapshot(seconds_since_input=0.1, seconds_since_pair=0.1, output_rate=5.0,
                              inference_ms={"p50": 190.0}, end_to_end_ms={"p95": 250.0})
    level, msg = diagnostics.assess(ok)
    assert level == diagnostics.OK and "5.0 Hz" in msg and "250.0" in msg
    assert diagnostics.assess(diagnostics.Snapshot())[0] == diagnostics.WARN  # no input yet
    unpaired = diagnostics.Snapshot(seconds_since_input=0.1, seconds_since_pair=9.0)
    assert "sync.slop" in diagnostics.assess(unpaired)[1]
    bad = diagnostics.Snapshot(seconds_since_input=0.1, seconds_since_pair=0.1, recent_decode_errors=3,
                               last_error="dropping image on /x")
    assert diagnostics.assess(bad) == (diagnostics.WARN, "dropping malformed images (3 since last report): "
                                                         "dropping image on /x")
    failing = diagnostics.Snapshot(recent_inference_errors=1, last_error="boom")
    assert diagnostics.assess(failing)[0] == diagnostics.ERROR
    keys = [k for k, _ in diagnostics.key_values(ok)]
    for k in ("rgb_rate_hz", "x_rate_hz", "output_rate_hz", "pairs_dropped", "sync_offset_ms_p50",
              "inference_latency_ms_p95", "end_to_end_latency_ms_p95"):
        assert k in keys

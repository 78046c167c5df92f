"""The sigma_segmentation node against real rclpy, over DDS, in separate processes.

The node runs as a subprocess (``python -m sigma_ros.ros.node --ros-args ...``); this pytest process is the camera
and the consumer (its own rclpy Context). Traffic stays on this host (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) and
in a domain chosen per test run. Checkpoints are Sigma-micro, written by the test; images are synthetic scenes.

Covers: synchronized RGB + thermal in, label/color/overlay/confidence out (content, size, encoding, header);
stamps inside and outside sync.slop; thermal of another resolution and 16-bit; depth (32FC1 with NaN/inf, 16UC1);
malformed inputs (the node keeps running and says why); run-time parameters; diagnostics; outputs without
subscribers not computed; a 30 Hz stream into a ~5 Hz model (bounded latency, dropped pairs counted, flat RSS);
SIGINT/SIGTERM exit 0; start-up failures with clear messages.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402

from sigma_ros.classes import DATASETS  # noqa: E402
from sigma_ros.data.synthetic import make_scene  # noqa: E402
from sigma_ros.image_codec import image_to_numpy, numpy_to_image  # noqa: E402
from sigma_ros.model import SigmaConfig, build_sigma, save_checkpoint  # noqa: E402
from sigma_ros.postprocess import colorize, overlay  # noqa: E402
from sigma_ros.segmenter import Segmenter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 96
# One domain per test run (pid-derived) so parallel CI jobs on one host do not see each other.
DOMAIN_ID = 1 + os.getpid() % 100
OUT_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


# ------------------------------------------------------------------ test-side ROS process
class Harness:
    """Camera + consumer side: publishers, recording subscriptions, spun in a background thread."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("sigma_test_harness", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.received = collections.defaultdict(list)  # topic -> [(receive time ns, msg)]
        self._pubs, self._subs = {}, {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down while waiting
                return

    def publisher(self, topic):
        if topic not in self._pubs:
            self._pubs[topic] = self.node.create_publisher(Image, topic, 10)  # camera drivers: reliable
        return self._pubs[topic]

    def subscribe(self, topic, msg_type=Image):
        if topic in self._subs:
            return

        def record(msg, topic=topic):
            with self._lock:
                self.received[topic].append((time.time_ns(), msg))

        self._subs[topic] = self.node.create_subscription(msg_type, topic, record, OUT_QOS)

    def unsubscribe(self, topic):
        self.node.destroy_subscription(self._subs.pop(topic))

    def msgs(self, topic):
        with self._lock:
            return list(self.received[topic])

    def by_stamp(self, topic):
        return {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec: m for _, m in self.msgs(topic)}

    def wait(self, predicate, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def diagnostics(self, node_fqn, after_ns=0):
        """Key/values of the newest diagnostics status of ``node_fqn`` received after ``after_ns``."""
        for t, arr in reversed(self.msgs("/diagnostics")):
            for st in arr.status:
                if t > after_ns and st.name.startswith(node_fqn + ":"):
                    return {kv.key: kv.value for kv in st.values}, st
        return None, None

    def fresh_diagnostics(self, node_fqn, timeout=4.0):
        start = time.time_ns()
        self.wait(lambda: self.diagnostics(node_fqn, start)[0] is not None, timeout, f"diagnostics of {node_fqn}")
        return self.diagnostics(node_fqn, start)

    def close(self):
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(2)


def stamp_header(msg, stamp_ns, frame_id):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    msg.header.frame_id = frame_id
    return msg


def image(array, encoding, stamp_ns, frame_id="camera"):
    return stamp_header(numpy_to_image(array, encoding), stamp_ns, frame_id)


def raw_image(stamp_ns, *, encoding="mono8", height=H, width=W, step=W, data=b""):
    msg = Image(height=height, width=width, encoding=encoding, step=step)
    msg.data = bytes(data)
    return stamp_header(msg, stamp_ns, "camera")


class NodeProcess:
    """``python -m sigma_ros.ros.node`` in its own process, output to a log file."""

    def __init__(self, tmp_path: Path, namespace: str, *ros_args: str):
        self.namespace = namespace
        self.fqn = f"/{namespace}/sigma_segmentation"
        self.log_path = tmp_path / f"{namespace}.log"
        cmd = [sys.executable, "-m", "sigma_ros.ros.node", "--ros-args", "-r", f"__ns:=/{namespace}",
               "-r", f"rgb/image:=/{namespace}_cam/rgb", "-r", f"x/image:=/{namespace}_cam/x", *ros_args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=ros_env(),
                                     cwd=str(tmp_path))

    @property
    def rgb_topic(self):
        return f"/{self.namespace}_cam/rgb"

    @property
    def x_topic(self):
        return f"/{self.namespace}_cam/x"

    def topic(self, name):
        return f"{self.fqn}/{name}"

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_ready(self, harness: Harness, timeout=60.0):
        rgb, x = harness.publisher(self.rgb_topic), harness.publisher(self.x_topic)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.output()}")
            return (rgb.get_subscription_count() > 0 and x.get_subscription_count() > 0
                    and harness.node.count_publishers(self.topic("label")) > 0)

        harness.wait(ready, timeout, f"node {self.fqn} to come up")
        # Discovery is two-sided: we have seen the node's label publisher, but its writer may not have matched our
        # reader yet (a label published before that is lost). Give the exchange a moment to finish both ways.
        time.sleep(1.0)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise AssertionError("no VmRSS")

    def stop(self, sig=signal.SIGINT, timeout=20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"node did not exit within {timeout} s of {sig!r}:\n{self.output()}")
        self._log.close()
        return self.proc.returncode


def ros_env():
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(DOMAIN_ID), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               RCUTILS_COLORIZED_OUTPUT="0")
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def harness():
    saved = {k: os.environ.get(k) for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY")}
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # read by rcl at init
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    h = Harness()
    h.subscribe("/diagnostics", DiagnosticArray)
    yield h
    h.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("ros_node")


def _checkpoint(path: Path, dataset: str, seed: int) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    classes = DATASETS[dataset]
    cfg = SigmaConfig.micro(num_classes=classes.num_classes)
    model = build_sigma(cfg)  # untrained, but its labels vary with the input (checked by the tests below)
    save_checkpoint(path, model, cfg, class_names=classes.class_names, palette=classes.palette, preprocessing="rgb")
    return path


@pytest.fixture(scope="module")
def mfnet_ckpt(workdir):
    return _checkpoint(workdir / "micro_mfnet.pt", "mfnet", seed=0)


@pytest.fixture(scope="module")
def main_node(harness, workdir, mfnet_ckpt):
    """The node as the launch file starts it: params file config/mfnet.yaml + config/checkpoint/device overrides,
    under a namespace, with remapped inputs; plus confidence output and a tight slop for the slop test."""
    cfg = ROOT / "config" / "mfnet.yaml"
    node = NodeProcess(workdir, "main", "--params-file", str(cfg), "-p", f"config:={cfg}",
                       "-p", f"checkpoint:={mfnet_ckpt}", "-p", "device:=cpu", "-p", "sync.slop:=0.02",
                       "-p", "publish_confidence:=true")
    for out in ("label", "color", "overlay", "confidence"):
        harness.subscribe(node.topic(out))
    node.wait_ready(harness)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def reference(mfnet_ckpt):
    """The same model in this process, to check the node's labels."""
    return Segmenter.from_checkpoint(mfnet_ckpt, device="cpu", class_config=str(ROOT / "config" / "mfnet.yaml"))


_stamp_lock = threading.Lock()
_last_stamp = [0]


def new_stamp() -> int:
    """Wall-clock stamps (the node measures latency against its own ROS clock), strictly increasing."""
    with _stamp_lock:
        _last_stamp[0] = max(time.time_ns(), _last_stamp[0] + 1_000_000)
        return _last_stamp[0]


def send_pair(harness, node, rgb, x, *, x_encoding="mono8", rgb_encoding="rgb8", dt_ns=5_000_000, stamp=None):
    stamp = new_stamp() if stamp is None else stamp
    harness.publisher(node.rgb_topic).publish(image(rgb, rgb_encoding, stamp, "rgb_optical"))
    harness.publisher(node.x_topic).publish(image(x, x_encoding, stamp + dt_ns, "thermal_optical"))
    return stamp


def send_and_wait(harness, node, rgb, x, **kw):
    """Send one pair and wait for its label: the next pair cannot supersede it in the node's latest-pair slot."""
    stamp = send_pair(harness, node, rgb, x, **kw)
    wait_labels(harness, node, [stamp])
    return stamp


def wait_labels(harness, node, stamps, timeout=30.0):
    topic = node.topic("label")
    harness.wait(lambda: set(stamps) <= set(harness.by_stamp(topic)), timeout,
                 f"labels for {len(stamps)} pairs on {topic}\n{node.output()[-3000:]}")
    return harness.by_stamp(topic)


def agreement(a, b) -> float:
    return float(np.mean(np.asarray(a) == np.asarray(b)))


# ------------------------------------------------------------------ tests
def test_synchronized_pairs_give_correct_outputs(harness, main_node, reference):
    scenes = [make_scene(seed, H, W) for seed in range(4)]
    stamps = [send_and_wait(harness, main_node, sc["rgb"], sc["x"]) for sc in scenes]
    labels = harness.by_stamp(main_node.topic("label"))
    wait_for = lambda name: harness.wait(  # noqa: E731
        lambda: set(stamps) <= set(harness.by_stamp(main_node.topic(name))), 10, name)
    for name in ("color", "overlay", "confidence"):
        wait_for(name)
    colors, overlays = harness.by_stamp(main_node.topic("color")), harness.by_stamp(main_node.topic("overlay"))
    confs = harness.by_stamp(main_node.topic("confidence"))
    palette = DATASETS["mfnet"].palette
    for sc, stamp in zip(scenes, stamps):
        lab_msg = labels[stamp]
        for msg, enc in ((lab_msg, "mono8"), (colors[stamp], "rgb8"), (overlays[stamp], "rgb8"),
                         (confs[stamp], "32FC1")):
            assert (msg.encoding, msg.height, msg.width) == (enc, H, W)
            assert msg.header.frame_id == "rgb_optical"  # the RGB image's header
        lab = image_to_numpy(lab_msg)
        ref = reference(sc["rgb"], sc["x"], confidence=True)
        assert agreement(lab, ref.labels) > 0.99
        assert lab.max() < 9
        np.testing.assert_array_equal(image_to_numpy(colors[stamp]), colorize(lab, palette))
        np.testing.assert_array_equal(image_to_numpy(overlays[stamp]), overlay(sc["rgb"], lab, palette, 0.5))
        conf = image_to_numpy(confs[stamp])
        assert conf.dtype == np.float32 and np.all((conf >= 1.0 / 9 - 1e-6) & (conf <= 1.0))
        np.testing.assert_allclose(conf, ref.confidence, atol=1e-3)


def test_thermal_of_other_resolution_and_16bit(harness, main_node, reference):
    sc = make_scene(11, H, W)
    small = sc["x"][::2, ::2].copy()  # half resolution: resized to the RGB geometry
    x16 = (sc["x"].astype(np.uint16) << 8) | 0x7F  # 16-bit radiometric thermal
    s1 = send_and_wait(harness, main_node, sc["rgb"], small)
    s2 = send_and_wait(harness, main_node, sc["rgb"], x16, x_encoding="mono16", rgb_encoding="bgr8")
    labels = harness.by_stamp(main_node.topic("label"))
    for stamp, x in ((s1, small), (s2, x16)):
        lab = image_to_numpy(labels[stamp])
        assert lab.shape == (H, W)
        assert agreement(lab, reference(sc["rgb"], x).labels) > 0.99
    assert main_node.proc.poll() is None


def test_stamps_inside_and_outside_slop(harness, main_node):
    sc = make_scene(3, H, W)
    before, _ = harness.fresh_diagnostics(main_node.fqn)
    inside = send_and_wait(harness, main_node, sc["rgb"], sc["x"], dt_ns=15_000_000)  # slop is 20 ms
    outside = send_pair(harness, main_node, sc["rgb"], sc["x"], dt_ns=30_000_000)
    time.sleep(0.4)  # stamps are wall-clock: the next pair is far from both halves of `outside`
    negative = send_and_wait(harness, main_node, sc["rgb"], sc["x"], dt_ns=-19_000_000)
    after_ok = send_and_wait(harness, main_node, sc["rgb"], sc["x"], dt_ns=0)
    labels = harness.by_stamp(main_node.topic("label"))
    assert outside not in harness.by_stamp(main_node.topic("label"))
    assert labels[inside].header.stamp.nanosec == inside % 10**9  # outputs carry the RGB stamp
    assert negative in labels and after_ok in labels  # X before RGB within the slop pairs too
    after, _ = harness.fresh_diagnostics(main_node.fqn)
    assert int(after["unpaired_dropped"]) >= int(before["unpaired_dropped"]) + 2  # both halves of `outside`
    assert float(after["sync_offset_ms_max"]) <= 20.0


def test_malformed_inputs_do_not_stop_the_node(harness, main_node):
    sc = make_scene(5, H, W)
    bad = [
        raw_image(new_stamp(), encoding="yuv422_yuy2", step=2 * W, data=bytes(2 * W * H)),  # unsupported
        raw_image(new_stamp(), encoding="rgb8", step=W, data=bytes(3 * W * H)),  # step < width * 3
        raw_image(new_stamp(), encoding="mono8", step=W, data=bytes(W * H // 2)),  # data too short
        raw_image(new_stamp(), encoding="mono8", height=0, width=0, step=0),  # zero size
        raw_image(new_stamp(), encoding="mono16", step=2 * W, data=bytes(2 * W * H)),  # 16-bit "RGB"
    ]
    for msg in bad:  # paced: the node's sensor-data QoS keeps only the last 5 of a burst
        harness.publisher(main_node.rgb_topic).publish(msg)
        harness.publisher(main_node.x_topic).publish(msg)
        time.sleep(0.02)
    for _ in range(30):  # a stream of one error is throttled in the log
        harness.publisher(main_node.x_topic).publish(raw_image(new_stamp(), encoding="foo"))
        time.sleep(0.01)
    time.sleep(0.3)
    ok = send_pair(harness, main_node, sc["rgb"], sc["x"])
    wait_labels(harness, main_node, [ok])
    assert main_node.proc.poll() is None
    diag, status = harness.fresh_diagnostics(main_node.fqn)
    assert int(diag["decode_errors"]) >= (2 * len(bad) - 1) + 25  # mono16 is valid thermal on x
    log = main_node.output()
    assert f"dropping image on {main_node.rgb_topic} (encoding 'yuv422_yuy2'): unsupported encoding" in log
    assert f"dropping image on {main_node.rgb_topic} (encoding 'rgb8'): step" in log
    assert f"dropping image on {main_node.x_topic} (encoding 'mono8'): data has" in log
    assert "empty image" in log
    assert "rgb/image must be 8-bit" in log
    assert log.count(f"dropping image on {main_node.x_topic} (encoding 'foo')") <= 2
    assert "Traceback" not in log


def test_outputs_without_subscribers_are_not_computed(harness, main_node):
    for name in ("color", "overlay", "confidence"):
        harness.unsubscribe(main_node.topic(name))
    harness.wait(lambda: all(harness.node.count_subscribers(main_node.topic(n)) == 0
                             for n in ("color", "overlay", "confidence")), 10, "unsubscribed")
    time.sleep(1.0)  # let the node's graph cache see it
    before, _ = harness.fresh_diagnostics(main_node.fqn)
    sc = make_scene(6, H, W)
    for _ in range(3):
        send_and_wait(harness, main_node, sc["rgb"], sc["x"])
    after, _ = harness.fresh_diagnostics(main_node.fqn)
    assert int(after["published_label"]) >= int(before["published_label"]) + 3
    for name in ("color", "overlay", "confidence"):
        assert after[f"published_{name}"] == before[f"published_{name}"], name
    for name in ("color", "overlay"):
        harness.subscribe(main_node.topic(name))


def test_parameters_have_descriptors_and_overlay_alpha_changes_at_run_time(harness, main_node):
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(harness.node, main_node.fqn)
    assert client.wait_for_services(10.0)

    def call(future):
        harness.wait(future.done, 10, "parameter service")
        return future.result()

    described = {d.name: d for d in call(client.describe_parameters(
        ["overlay_alpha", "device", "sync.slop", "sync.queue_size", "checkpoint"])).descriptors}
    alpha = described["overlay_alpha"]
    assert alpha.floating_point_range[0].to_value == 1.0 and not alpha.read_only
    assert described["device"].read_only and "auto" in described["device"].additional_constraints
    assert described["sync.queue_size"].integer_range[0].from_value == 1
    assert described["checkpoint"].description
    got = call(client.get_parameters(["sync.slop", "modality"])).values
    assert (got[0].double_value, got[1].string_value) == (0.02, "thermal")  # -p override beats the params file

    results = call(client.set_parameters([Parameter("overlay_alpha", value=1.5)])).results
    assert not results[0].successful  # out of range
    results = call(client.set_parameters([Parameter("device", value="cuda")])).results
    assert not results[0].successful  # read-only
    results = call(client.set_parameters([Parameter("overlay_alpha", value=1.0)])).results
    assert results[0].successful
    harness.wait(lambda: harness.node.count_publishers(main_node.topic("overlay")) > 0, 5, "overlay publisher")
    time.sleep(1.0)  # let the node see our re-created subscriptions
    sc = make_scene(8, H, W)
    stamp = send_pair(harness, main_node, sc["rgb"], sc["x"])
    wait_labels(harness, main_node, [stamp])
    harness.wait(lambda: stamp in harness.by_stamp(main_node.topic("overlay"))
                 and stamp in harness.by_stamp(main_node.topic("color")), 10, "overlay/color")
    ov = image_to_numpy(harness.by_stamp(main_node.topic("overlay"))[stamp])
    np.testing.assert_array_equal(ov, image_to_numpy(harness.by_stamp(main_node.topic("color"))[stamp]))
    call(client.set_parameters([Parameter("overlay_alpha", value=0.5)]))


def test_diagnostics_report(harness, main_node, mfnet_ckpt):
    diag, status = harness.fresh_diagnostics(main_node.fqn)
    assert status.hardware_id == "cpu"
    assert diag["device"] == "cpu" and diag["model"] == "Sigma-micro (9 classes)"
    assert diag["checkpoint"] == str(mfnet_ckpt)
    assert diag["precision"] == "fp32" and diag["modality"] == "thermal"
    for key in ("rgb_rate_hz", "x_rate_hz", "output_rate_hz", "pairs_dropped", "sync_offset_ms_p50",
                "inference_latency_ms_p50", "inference_latency_ms_p95", "end_to_end_latency_ms_p50",
                "end_to_end_latency_ms_p95"):
        assert key in diag, key
    assert int(diag["outputs_published"]) > 0 and float(diag["inference_latency_ms_p50"]) > 0
    assert float(diag["end_to_end_latency_ms_p50"]) >= float(diag["inference_latency_ms_p50"])
    # 1 Hz
    mine = [t for t, arr in harness.msgs("/diagnostics") if any(s.name.startswith(main_node.fqn + ":")
                                                               for s in arr.status)]
    periods = np.diff(mine[-4:]) / 1e9
    assert np.all((periods > 0.3) & (periods < 2.0)), periods


def test_sigint_exits_cleanly(main_node):
    rc = main_node.stop(signal.SIGINT)
    log = main_node.output()
    assert rc == 0, log
    assert "Traceback" not in log and "shutting down" in log


def test_depth_node_with_nan_and_16bit_depth(harness, workdir):
    """RGB-D with the built-in class config `nyu` (40 classes): modality depth comes from it. SIGTERM ends it."""
    ckpt = _checkpoint(workdir / "micro_nyu.pt", "nyu", seed=1)
    node = NodeProcess(workdir, "depth", "-p", "config:=nyu", "-p", f"checkpoint:={ckpt}", "-p", "device:=cpu")
    harness.subscribe(node.topic("label"))
    try:
        node.wait_ready(harness)
        ref = Segmenter.from_checkpoint(ckpt, device="cpu", class_config="nyu", modality="depth")
        sc = make_scene(21, H, W)
        depth = (sc["x"].astype(np.float32) / 25.0)
        depth[:10] = np.nan
        depth[-5:, :20] = np.inf
        depth_mm = np.nan_to_num(depth * 1000, nan=0, posinf=0).astype(np.uint16)
        rgba = np.concatenate([sc["rgb"], np.full((H, W, 1), 255, np.uint8)], axis=2)
        s1 = send_and_wait(harness, node, sc["rgb"], depth, x_encoding="32FC1")
        s2 = send_and_wait(harness, node, sc["rgb"], depth_mm, x_encoding="16UC1")
        stamp = new_stamp()
        harness.publisher(node.rgb_topic).publish(stamp_header(_rgba_msg(rgba), stamp, "rgb_optical"))
        harness.publisher(node.x_topic).publish(image(depth, "32FC1", stamp))
        labels = wait_labels(harness, node, [s1, s2, stamp])
        for s, x in ((s1, depth), (s2, depth_mm), (stamp, depth)):
            lab = image_to_numpy(labels[s])
            assert labels[s].encoding == "mono8" and lab.shape == (H, W) and lab.max() < 40
            assert agreement(lab, ref(sc["rgb"], x).labels) > 0.99
        diag, _ = harness.fresh_diagnostics(node.fqn)
        assert diag["modality"] == "depth" and diag["model"] == "Sigma-micro (40 classes)"
        assert int(diag["inference_errors"]) == 0
    finally:
        rc = node.stop(signal.SIGTERM)
    log = node.output()
    assert rc == 0 and "Traceback" not in log, log


def _rgba_msg(rgba):
    msg = Image(height=rgba.shape[0], width=rgba.shape[1], encoding="rgba8", step=rgba.shape[1] * 4)
    msg.data = rgba.tobytes()
    return msg


def test_slow_inference_keeps_latency_bounded_and_memory_flat(harness, workdir, mfnet_ckpt):
    """30 Hz camera, ~5 Hz model: old pairs are dropped, not queued.

    Camera images are 240x320 (so leaked frames would show in RSS), inference runs at 96x64 (input_size) and
    ``debug.inference_delay`` pads each inference to about 200 ms.
    """
    node = NodeProcess(workdir, "slow", "-p", f"checkpoint:={mfnet_ckpt}",  # device: auto (the default)
                       "-p", "input_size:=96x64", "-p", "debug.inference_delay:=0.15", "-p", "cpu_threads:=1")
    harness.subscribe(node.topic("label"))
    try:
        node.wait_ready(harness)
        hh, ww = 240, 320
        frames = [make_scene(30 + i, hh, ww) for i in range(4)]
        rgb_pub, x_pub = harness.publisher(node.rgb_topic), harness.publisher(node.x_topic)
        n_frames, period = 300, 1 / 30.0
        sent, rss = [], []
        t0 = time.monotonic()
        for i in range(n_frames):
            sc = frames[i % len(frames)]
            stamp = new_stamp()
            rgb_pub.publish(image(sc["rgb"], "rgb8", stamp, "rgb_optical"))
            x_pub.publish(image(sc["x"], "mono8", stamp + 3_000_000, "thermal_optical"))
            sent.append(stamp)
            if i in (90, n_frames - 1):
                rss.append(node.rss_mb())
            time.sleep(max(0.0, t0 + (i + 1) * period - time.monotonic()))
        elapsed = time.monotonic() - t0
        time.sleep(1.5)
        diag, _ = harness.fresh_diagnostics(node.fqn)
        assert node.proc.poll() is None and diag["cpu_threads"] == "1"
        assert diag["modality"] == "thermal" and diag["class_config"] == "(from checkpoint)"
    finally:
        rc = node.stop(signal.SIGINT)
    assert rc == 0, node.output()
    import torch

    if not torch.cuda.is_available():
        assert "device auto: CUDA is not available, running on the CPU" in node.output()
    got = [(t, m) for t, m in harness.msgs(node.topic("label"))
           if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec in set(sent)]
    latency = np.array([(t - (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec)) / 1e9 for t, m in got])
    inference = float(diag["inference_latency_ms_p50"]) / 1e3  # includes the delay: the real period
    assert inference >= 0.15
    assert len(got) >= 0.5 * elapsed / inference  # the worker kept busy
    assert len(got) <= 1.2 * elapsed / inference + 2  # ... and never ran ahead of itself
    p95 = float(np.percentile(latency, 95))
    print(f"\n30 Hz in, inference {inference * 1e3:.0f} ms: {len(got)} outputs from {n_frames} pairs, "
          f"end-to-end p50 {np.median(latency) * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms, "
          f"RSS {rss[0]:.0f} -> {rss[1]:.0f} MB")
    assert p95 < 2 * inference, (p95, inference)
    assert int(diag["pairs_dropped"]) >= n_frames // 2  # most pairs were superseded, and counted
    assert (np.array([m.height for _, m in got]) == hh).all()
    assert rss[1] - rss[0] < 25.0, rss  # no frame backlog / leak: 300 pairs of 240x320 would be ~90 MB


def test_startup_failures_are_clear(harness, workdir, mfnet_ckpt):
    """Missing/invalid checkpoint, unavailable CUDA, bad parameters: exit code 1 with one clear line, no traceback."""
    torch = pytest.importorskip("torch")
    garbage = workdir / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases = {
        "missing": (["-p", f"checkpoint:={workdir / 'nope.pt'}"], "checkpoint not found"),
        "garbage": (["-p", f"checkpoint:={garbage}"], str(garbage)),
        "classes": (["-p", f"checkpoint:={mfnet_ckpt}", "-p", "config:=nyu"], "40"),
        "variant": (["-p", f"checkpoint:={mfnet_ckpt}", "-p", "variant:=tiny"], "tiny"),
        "size": (["-p", f"checkpoint:={mfnet_ckpt}", "-p", "input_size:=big"], "'input_size'"),
        "alpha": (["-p", f"checkpoint:={mfnet_ckpt}", "-p", "overlay_alpha:=2.0"], "overlay_alpha"),
        "nockpt": ([], "'checkpoint' is required"),
    }
    if not torch.cuda.is_available():
        cases["cuda"] = (["-p", f"checkpoint:={mfnet_ckpt}", "-p", "device:=cuda"], "CUDA is not available")
    procs = {name: NodeProcess(workdir, f"fail_{name}", *args) for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        try:
            proc.proc.wait(120)
        finally:
            if proc.proc.poll() is None:
                proc.proc.kill()
        log = proc.output()
        assert proc.proc.returncode == 1, (name, log)
        assert "cannot start:" in log and cases[name][1] in log, (name, log)
        assert "Traceback" not in log, (name, log)

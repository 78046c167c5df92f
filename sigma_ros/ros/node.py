"""ROS 2 node ``sigma_segmentation``: RGB + thermal/depth images in, semantic label images out.

Thin wiring only: decoding/encoding is :mod:`sigma_ros.image_codec`, pairing :mod:`sigma_ros.sync`, inference
:mod:`sigma_ros.segmenter`, colouring :mod:`sigma_ros.postprocess` (via :mod:`.outputs`).

Threads: the executor (main thread) runs the subscription callbacks (decode, pair) and the 1 Hz diagnostics timer;
one worker thread runs inference. They meet in a :class:`~sigma_ros.ros.stats.LatestSlot` that holds only the newest
pair, so a model slower than the cameras drops (and counts) old pairs instead of queueing them: latency stays at
about one inference period plus one frame interval, whatever the input rate.

Run: ``ros2 run sigma_ros sigma_segmentation --ros-args -p checkpoint:=model.pt -r rgb/image:=/cam/rgb ...``
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from sigma_ros.image_codec import ImageDecodeError, header_stamp_ns, image_to_numpy
from sigma_ros.ros import diagnostics
from sigma_ros.ros.outputs import render_outputs, to_messages
from sigma_ros.ros.params import PARAMETERS, NodeSettings, SettingsError, validate
from sigma_ros.ros.stats import ErrorThrottle, LatencyWindow, LatestSlot, RateMeter
from sigma_ros.sync import ApproximateTimeSync, SyncMatch

NODE_NAME = "sigma_segmentation"
# Outputs: reliable + volatile (matches reliable and best-effort subscribers, e.g. RViz either way), shallow.
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, checkpoint, device); the message says what to fix."""


@dataclass
class Frame:
    """A synchronized pair ready for inference."""

    rgb: np.ndarray  # (H, W, 3) uint8 RGB
    x: np.ndarray  # (H', W') uint8/uint16/float32 or (H', W', 3) uint8
    header: Any  # the RGB message's header: outputs carry its stamp and frame_id
    stamp_ns: int
    arrival: float  # time.monotonic() when the later of the two images arrived


def _descriptor(spec) -> ParameterDescriptor:
    d = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(c if c else "''" for c in spec.choices)
    if spec.float_range:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.float_range[0]),
                                                     to_value=float(spec.float_range[1]), step=0.0)]
    if spec.int_range:
        d.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)]
    return d


class SegmentationNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.settings = self._read_parameters()
        self.segmenter = self._load_segmenter(self.settings)
        s = self.settings

        self._alpha = s.overlay_alpha
        self._stop = threading.Event()
        self._slot = LatestSlot()
        self._sync = ApproximateTimeSync(num_inputs=2, queue_size=s.queue_size, slop=s.slop)
        self._lock = threading.Lock()  # guards the counters below (callbacks and worker thread)
        self._rates = {k: RateMeter() for k in ("rgb", "x", "pair", "output")}
        self._lat = {k: LatencyWindow() for k in ("sync_offset", "inference", "end_to_end", "node")}
        self._throttle = ErrorThrottle(period=5.0)
        self._received = {"rgb": 0, "x": 0}
        self._decode_errors = 0
        self._inference_errors = 0
        self._recent_decode_errors = 0
        self._recent_inference_errors = 0
        self._last_error = ""
        self._last_input = -math.inf
        self._last_pair = -math.inf
        self._outputs = 0
        self._published = {"label": 0, "color": 0, "overlay": 0}

        self._pubs = {
            "label": self.create_publisher(Image, "~/label", OUTPUT_QOS),
            "color": self.create_publisher(Image, "~/color", OUTPUT_QOS),
            "overlay": self.create_publisher(Image, "~/overlay", OUTPUT_QOS),
        }
        if s.publish_confidence:
            self._pubs["confidence"] = self.create_publisher(Image, "~/confidence", OUTPUT_QOS)
            self._published["confidence"] = 0
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Sensor-data QoS (best effort, keep last 5; REP-2003) matches reliable and best-effort camera drivers.
        self._subs = {
            "rgb": self.create_subscription(Image, "rgb/image", lambda m: self._on_image(m, "rgb"),
                                            qos_profile_sensor_data),
            "x": self.create_subscription(Image, "x/image", lambda m: self._on_image(m, "x"),
                                          qos_profile_sensor_data),
        }
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._static = {k: str(v) for k, v in self.segmenter.describe().items()}  # device, model, checkpoint, ...
        self._static.update({
            "checkpoint": os.path.abspath(s.checkpoint),
            "class_config": s.config or "(from checkpoint)",
            "input_size": "native" if s.input_size is None else f"{s.input_size[0]}x{s.input_size[1]}",
            "modality": s.modality,
            "cpu_threads": str(torch.get_num_threads()),
        })
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._run_worker, name="sigma_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: {self._model_text()} on {self.segmenter.device} ({self.segmenter.precision}, scan backend "
            f"{self._static.get('scan_backend', '?')}); "
            f"rgb={self._subs['rgb'].topic_name} x={self._subs['x'].topic_name} ({s.modality}); "
            f"outputs under {self.get_fully_qualified_name()}/")

    # ---------------------------------------------------------------- start-up
    def _read_parameters(self) -> NodeSettings:
        values: Dict[str, Any] = {}
        for spec in PARAMETERS:
            try:
                values[spec.name] = self.declare_parameter(spec.name, spec.default, _descriptor(spec)).value
            except ParameterException as e:  # wrong type or out of range in a params file / -p override
                raise StartupError(f"parameter '{spec.name}': {e}") from None
        try:
            return validate(values)
        except SettingsError as e:
            raise StartupError(str(e)) from None

    def _load_segmenter(self, s: NodeSettings):
        from sigma_ros.model import CheckpointError
        from sigma_ros.segmenter import Segmenter

        if not os.path.isfile(s.checkpoint):
            raise StartupError(f"checkpoint not found: {s.checkpoint} (parameter 'checkpoint')")
        if s.device == "cuda" and not torch.cuda.is_available():
            raise StartupError(f"device:=cuda requested but CUDA is not available (torch {torch.__version__}, "
                               f"cuda build: {torch.version.cuda}); use device:=auto or device:=cpu")
        if s.cpu_threads > 0:
            torch.set_num_threads(s.cpu_threads)
        device = s.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if device == "cpu":
                self.get_logger().warning("device auto: CUDA is not available, running on the CPU (slow for real "
                                          "models; set device:=cpu to silence this)")
        class_config = None
        if s.config:
            from sigma_ros.classes import load_class_config
            try:
                class_config = load_class_config(s.config)
            except Exception as e:
                raise StartupError(f"class config {s.config!r} (parameter 'config'): {e}") from None
        modality = s.modality or (class_config.modality if class_config is not None else "thermal")
        self.settings = s = dataclasses.replace(s, modality=modality)
        try:
            seg = Segmenter.from_checkpoint(
                s.checkpoint, variant=s.variant or None, class_config=class_config, device=device,
                precision=s.precision, input_size=s.input_size, modality=s.modality, depth_range=s.depth_range,
                fast=s.fast_path, compile=s.compile)
        except CheckpointError as e:  # names the file and the problem (also variant/class-count mismatches)
            raise StartupError(f"invalid checkpoint: {e}") from None
        except Exception as e:  # unreadable file, device/precision errors
            raise StartupError(f"cannot load checkpoint {s.checkpoint}: {type(e).__name__}: {e}") from None
        # Fail now, not on the first frame, when the precision/device combination cannot run.
        try:
            h, w = (s.input_size[1], s.input_size[0]) if s.input_size else (64, 64)
            x = np.zeros((h, w), np.float32 if s.modality == "depth" else np.uint8)
            seg(np.zeros((h, w, 3), np.uint8), x)
        except Exception as e:
            raise StartupError(f"test inference failed on {seg.device} ({s.precision}): {e}") from None
        return seg

    def _model_text(self) -> str:
        c = self.segmenter.config
        return f"Sigma-{c.variant} ({self.segmenter.num_classes} classes)"

    # ---------------------------------------------------------------- callbacks (executor thread)
    def _on_image(self, msg: Image, role: str) -> None:
        now = time.monotonic()
        self._rates[role].tick()
        with self._lock:
            self._received[role] += 1
            self._last_input = now
        try:
            array = image_to_numpy(msg)
            array = self._check_layout(array, role)
            stamp_ns = header_stamp_ns(msg)
        except ImageDecodeError as e:
            # Throttle per topic and kind of problem (numbers stripped), so one flood cannot hide another error.
            kind = re.sub(r"\d+", "#", str(e))
            self._report_error(("decode", role, str(msg.encoding), kind), decode=True,
                               text=f"dropping image on {self._subs[role].topic_name} "
                                    f"(encoding {msg.encoding!r}): {e}")
            return
        match = self._sync.add(0 if role == "rgb" else 1, stamp_ns, (array, msg.header, now))
        if match is not None:
            self._on_pair(match)

    def _check_layout(self, array: np.ndarray, role: str) -> np.ndarray:
        if role == "rgb":
            if array.dtype != np.uint8:
                raise ImageDecodeError(f"rgb/image must be 8-bit (colour or mono8), got {array.dtype} pixels")
            if array.ndim == 2:  # a mono camera on the RGB input: replicate to three channels
                array = np.repeat(array[:, :, None], 3, axis=2)
        elif self.settings.modality == "depth" and array.ndim == 3:
            raise ImageDecodeError("x/image carries depth (modality=depth) but is a colour image")
        return array

    def _on_pair(self, match: SyncMatch) -> None:
        (rgb, header, t_rgb), (x, _, t_x) = match.msgs
        now = time.monotonic()
        self._rates["pair"].tick()
        with self._lock:
            self._last_pair = now
        self._lat["sync_offset"].add(match.spread_ns * 1e-6)  # ms
        frame = Frame(rgb=rgb, x=x, header=header, stamp_ns=match.stamps[0], arrival=max(t_rgb, t_x))
        self._slot.put(frame)  # replaces (and counts) a pair the worker has not started on

    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "overlay_alpha":  # range checked by rclpy from the descriptor
                self._alpha = float(p.value)
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- inference (worker thread)
    def _run_worker(self) -> None:
        while not self._stop.is_set():
            frame = self._slot.get(timeout=0.25)
            if frame is None:
                continue
            try:
                self._process(frame)
            except Exception as e:  # keep serving: a bad frame must not kill the node
                if self._stop.is_set():
                    break
                self._report_error(("inference", type(e).__name__), decode=False,
                                   text=f"inference failed on a {frame.rgb.shape[1]}x{frame.rgb.shape[0]} pair "
                                        f"(x {frame.x.shape} {frame.x.dtype}): {type(e).__name__}: {e}")

    def _process(self, frame: Frame) -> None:
        t0 = time.monotonic()
        want = {name: pub.get_subscription_count() > 0 for name, pub in self._pubs.items()}
        if self.segmenter.draws_on_device:  # GPU: the frame stays there until the finished outputs are copied back
            seg = self.segmenter.segment_on_device(frame.rgb, frame.x, confidence=want.get("confidence", False))
            image = seg.rgb
        else:
            seg = self.segmenter(frame.rgb, frame.x, confidence=want.get("confidence", False))
            image = frame.rgb
        if self.settings.inference_delay > 0:
            time.sleep(self.settings.inference_delay)  # test aid: emulate a slow model
        outputs = render_outputs(
            seg.labels, image, self.segmenter.palette, alpha=self._alpha, num_classes=self.segmenter.num_classes,
            want_color=want["color"], want_overlay=want["overlay"],
            confidence=seg.confidence if want.get("confidence") else None)
        t1 = time.monotonic()  # inference up to the output arrays: on a GPU the work is only done by then
        for name, msg in to_messages(outputs, frame.header).items():
            self._pubs[name].publish(msg)
        done = time.monotonic()
        self._rates["output"].tick()
        with self._lock:
            self._outputs += 1
            for name in outputs:
                self._published[name] += 1
        self._lat["inference"].add((t1 - t0) * 1e3)
        self._lat["node"].add((done - frame.arrival) * 1e3)
        self._lat["end_to_end"].add((self.get_clock().now().nanoseconds - frame.stamp_ns) * 1e-6)

    # ---------------------------------------------------------------- errors and diagnostics
    def _report_error(self, key, *, decode: bool, text: str) -> None:
        with self._lock:
            if decode:
                self._decode_errors += 1
                self._recent_decode_errors += 1
            else:
                self._inference_errors += 1
                self._recent_inference_errors += 1
            self._last_error = text
        suppressed = self._throttle.check(key)
        if suppressed is not None:
            more = f" ({suppressed} similar suppressed)" if suppressed else ""
            self.get_logger().error(text + more)

    def snapshot(self) -> diagnostics.Snapshot:
        now = time.monotonic()
        with self._lock:
            snap = diagnostics.Snapshot(
                rgb_received=self._received["rgb"], x_received=self._received["x"],
                decode_errors=self._decode_errors, inference_errors=self._inference_errors,
                recent_decode_errors=self._recent_decode_errors,
                recent_inference_errors=self._recent_inference_errors, last_error=self._last_error,
                outputs=self._outputs, published=dict(self._published), seconds_since_input=now - self._last_input,
                seconds_since_pair=now - self._last_pair)
            self._recent_decode_errors = self._recent_inference_errors = 0
        snap.rgb_rate, snap.x_rate = self._rates["rgb"].rate(), self._rates["x"].rate()
        snap.pair_rate, snap.output_rate = self._rates["pair"].rate(), self._rates["output"].rate()
        snap.pairs = self._slot.put_count
        snap.pairs_dropped = self._slot.dropped
        snap.unpaired_dropped = self._sync.dropped
        snap.sync_offset_ms = self._lat["sync_offset"].summary()
        snap.inference_ms = self._lat["inference"].summary()
        snap.end_to_end_ms = self._lat["end_to_end"].summary()
        snap.node_latency_ms = self._lat["node"].summary()
        snap.static = dict(self._static)
        return snap

    def _publish_diagnostics(self) -> None:
        msg = diagnostics.to_message(self.snapshot(), name=f"{self.get_fully_qualified_name()}: segmentation",
                                     hardware_id=str(self.segmenter.device), stamp=self.get_clock().now().to_msg())
        self._diag_pub.publish(msg)

    # ---------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop the worker (it finishes the frame in hand, then exits)."""
        self._stop.set()
        self._slot.close()
        self._worker.join(timeout=10.0)


def main(args: Optional[list] = None) -> int:
    """Console script ``sigma_segmentation``: returns the exit code (0 on SIGINT/SIGTERM, 1 on a start-up error)."""
    # Our own signal handlers: a flag checked by the spin loop gives an orderly stop (worker joined, node
    # destroyed, exit code 0) instead of a KeyboardInterrupt traceback from wherever the main thread was.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    started = threading.Event()

    def on_signal(signum, _frame):
        stop.set()
        if not started.is_set():  # still loading the model: abandon start-up now rather than after it
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    node = None
    try:
        try:
            node = SegmentationNode()
        except StartupError as e:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {e}")
            return 1
        started.set()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass
        node.get_logger().info("shutting down")
        return 0
    except KeyboardInterrupt:
        rclpy.logging.get_logger(NODE_NAME).info("interrupted during start-up")
        return 0
    finally:
        started.set()  # from here on a signal only sets the flag
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())

"""``sigma-ros demo``: see Sigma segment, on CPU, without a robot.

Live mode (default): starts the ``sigma_segmentation`` node in its own process with the demo checkpoint, and in this
process a synthetic RGB-thermal camera (rclpy publishers: ``rgb8`` + ``mono16``/``mono8`` thermal with equal header
stamps at ``--rate`` Hz, street scenes from :func:`sigma_ros.data.synthetic.make_scene`, slowly panning) plus
subscribers to the node's ``~/overlay``, ``~/label`` and ``/diagnostics``. It runs for ``--duration`` seconds (or
until ``--frames`` results arrived), writes RGB | thermal | overlay strips, the node's overlay and label images and an
animated GIF to ``--out``, stops the node with SIGINT and prints the node's diagnostics as a table. Traffic stays on
this host (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) in a domain of its own (``--domain-id``).

Real-frame mode (``--rgb PATH [--x PATH]``, no ROS needed): segments one real image pair and writes ``label.png``
(class ids), ``color.png``, ``overlay.png`` and ``strip.png``, then prints the class histogram. An MFNet 4-channel PNG
(RGB + thermal in alpha) works as ``--rgb`` alone; 16-bit thermal or depth PNGs work as ``--x``.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

CHECKPOINT_NAME = "sigma_micro_synthetic.pt"
PACKAGE = "sigma_ros"
CAPTION_H = 16  # caption band above the panels of a strip (panels start at this row)
LEGEND_H = 16  # class legend band below the panels
NODE_NAMESPACE = "sigma_demo"
RGB_TOPIC = "/demo_camera/color/image_raw"
X_TOPIC = "/demo_camera/thermal/image_raw"
SHORT = {"size": "160x120", "frames": 12, "duration": 10.0}


class DemoError(RuntimeError):
    """The demo cannot run; the message says what to fix."""


# ------------------------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Live (default): the sigma_segmentation node + a synthetic RGB-thermal camera over ROS 2 for a bounded time; "
        "writes strips/overlays/labels PNGs and demo.gif, prints the node's diagnostics. "
        "Real frames: --rgb PATH [--x PATH] segments one image pair (no ROS needed).")
    p.add_argument("--checkpoint", default=None,
                   help=f"checkpoint (default: the bundled models/{CHECKPOINT_NAME}, from the checkout or the "
                        f"installed share/{PACKAGE}/models/)")
    p.add_argument("--out", default=None,
                   help="output folder [live: demo_out; real frames: demo_out/<rgb file name>]")
    p.add_argument("--config", default=None,
                   help="class config (mfnet, pst900, nyu, sunrgbd or a YAML path); default: from the checkpoint")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight [0.5]")
    p.add_argument("--input-size", default=None,
                   help="run the model at WxH, e.g. 160x120 (faster on CPU); outputs keep the image size [native]")
    live = p.add_argument_group("live mode")
    live.add_argument("--duration", type=float, default=None,
                      help="seconds of camera stream once the node is up [20; with --frames: 120 at most]")
    live.add_argument("--frames", type=int, default=None, help="stop after this many segmented frames arrived")
    live.add_argument("--short", action="store_true",
                      help=f"quick check for CI: {SHORT['size']} images, {SHORT['frames']} frames, "
                           f"at most {SHORT['duration']:.0f} s of stream")
    live.add_argument("--size", default="320x240", help="camera image size WxH [320x240]")
    live.add_argument("--rate", type=float, default=10.0, help="camera rate, Hz [10]")
    live.add_argument("--thermal-encoding", choices=["mono16", "mono8"], default="mono16",
                      help="thermal image encoding [mono16]")
    live.add_argument("--scene-seconds", type=float, default=2.0, help="seconds per synthetic scene [2]")
    live.add_argument("--seed", type=int, default=0, help="scene seed [0]")
    live.add_argument("--cpu-threads", type=int, default=0, help="the node's cpu_threads parameter [0 = all cores]")
    live.add_argument("--domain-id", type=int, default=None,
                      help="ROS_DOMAIN_ID for the demo (default: one derived from the process id, so the demo "
                           "does not mix with other ROS traffic)")
    live.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the node [180]")
    live.add_argument("--gif-width", type=int, default=640, help="width of demo.gif frames [640]")
    live.add_argument("--gif-max-frames", type=int, default=100,
                      help="at most this many GIF frames (evenly picked) [100]")
    live.add_argument("--gif-colors", type=int, default=128, help="colours per GIF frame, 2..256 [128]")
    real = p.add_argument_group("real-frame mode")
    real.add_argument("--rgb", default=None, help="RGB image (or an MFNet 4-channel RGB+thermal PNG)")
    real.add_argument("--x", default=None, help="thermal or depth image (8/16-bit PNG); omit for MFNet 4-channel")
    real.add_argument("--modality", choices=["thermal", "depth"], default=None,
                      help="what --x is [thermal; depth when the file name contains 'depth']")
    real.add_argument("--device", default="cpu", help="cpu | cuda | auto [cpu]")


def run(args) -> int:
    try:
        if args.rgb is not None:
            return run_real(args)
        if args.x is not None:
            raise DemoError("--x needs --rgb (real-frame mode)")
        return run_live(args)
    except DemoError as e:
        print(f"sigma-ros demo: error: {e}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------------------------------
def default_checkpoint_candidates() -> list[Path]:
    """Where the bundled demo checkpoint may be: the checkout, ament's share dir, the pip prefix's share dir."""
    here = Path(__file__).resolve().parents[2]  # checkout / editable install: <repo>/sigma_ros/tools/demo.py
    candidates = [here / "models" / CHECKPOINT_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "models" / CHECKPOINT_NAME)
    except Exception:  # no ament_index (pip install) or package not in the ament index
        pass
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "models" / CHECKPOINT_NAME)
    return candidates


def resolve_checkpoint(path: str | None) -> Path:
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DemoError(f"checkpoint not found: {p}")
        return p.resolve()
    candidates = default_checkpoint_candidates()
    for c in candidates:
        if c.is_file():
            return c
    raise DemoError(f"the demo checkpoint {CHECKPOINT_NAME} is missing; looked in: "
                    + ", ".join(str(c) for c in candidates)
                    + ". Use a git checkout that includes models/ (or pass --checkpoint PATH).")


def parse_size(text: str, what: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DemoError(f"{what} must be WxH, e.g. 320x240; got {text!r}") from None
    if w < 32 or h < 32:
        raise DemoError(f"{what} must be at least 32x32, got {text}")
    return w, h


# ------------------------------------------------------------------------------------------------------------------
# pictures
_IRON = np.array([[0, 0, 0], [40, 0, 100], [150, 0, 150], [230, 60, 30], [255, 170, 0], [255, 255, 190]], np.float32)


def thermal_colormap(x8: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8 'iron' palette (cold black/purple, warm red/orange, hot yellow/white)."""
    pos = np.linspace(0, 255, len(_IRON))
    lut = np.stack([np.interp(np.arange(256), pos, _IRON[:, c]) for c in range(3)], axis=1)
    return lut.round().astype(np.uint8)[x8]


def x_for_display(x: np.ndarray, size: tuple[int, int], modality: str = "thermal") -> np.ndarray:
    """Any X image -> (H, W, 3) uint8 at ``size`` (W, H) for the eye: grey images stretched linearly between their
    1st and 99.9th (depth: 99th) percentile, as a thermal viewer's automatic gain does, and drawn with the iron
    palette; depth <= 0 or NaN (no reading) is black. Colour X images are shown as they are."""
    from PIL import Image

    x = np.asarray(x)
    if x.ndim == 3:
        vis = x[..., :3].astype(np.uint8)
    else:
        v = x.astype(np.float32)
        valid = np.isfinite(v) & (v > 0) if modality == "depth" else np.isfinite(v)
        lo, hi = np.percentile(v[valid], [1, 99 if modality == "depth" else 99.9]) if valid.any() else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        x8 = np.where(valid, np.clip((np.nan_to_num(v) - lo) * (255.0 / (hi - lo)), 1, 255), 0)
        vis = thermal_colormap(x8.astype(np.uint8))
    if vis.shape[1::-1] != tuple(size):
        vis = np.asarray(Image.fromarray(vis).resize(size, Image.BILINEAR))
    return vis


def compose_strip(rgb: np.ndarray, x_vis: np.ndarray, over: np.ndarray, labels: np.ndarray, class_names,
                  palette: np.ndarray, x_name: str = "thermal") -> np.ndarray:
    """RGB | X | overlay side by side, captions above (CAPTION_H rows), a legend of the classes present below
    (LEGEND_H rows). Panels are copied unchanged: rows CAPTION_H .. CAPTION_H + H hold the three images."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    canvas = Image.new("RGB", (3 * w, CAPTION_H + h + LEGEND_H), (20, 20, 20))
    for i, panel in enumerate((rgb, x_vis, over)):
        canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (i * w, CAPTION_H))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(("RGB", x_name, "Sigma RGB-" + x_name)):
        draw.text((i * w + 4, 2), text, fill=(235, 235, 235))
    counts = np.bincount(np.asarray(labels).ravel(), minlength=len(palette))
    x0, y0 = 4, CAPTION_H + h + 3
    for k in np.argsort(-counts[: len(palette)]):
        if counts[k] == 0:
            break
        name = class_names[k] if k < len(class_names) else str(k)
        width = 14 + 6 * len(name) + 10
        if x0 + width > 3 * w:
            break
        draw.rectangle([x0, y0, x0 + 9, y0 + 9], fill=tuple(int(c) for c in palette[k]), outline=(200, 200, 200))
        draw.text((x0 + 13, y0 - 1), name, fill=(235, 235, 235))
        x0 += width
    return np.asarray(canvas)


def save_gif(path: Path, frames: list[np.ndarray], frame_ms: int, width: int, max_frames: int,
             colors: int = 128) -> int:
    """Write frames (evenly thinned to ``max_frames``, scaled to ``width``, ``colors`` colours each) as a looping
    GIF; returns the frame count. Sensor noise makes GIFs big: fewer colours and frames keep them small."""
    from PIL import Image

    if not frames:
        return 0
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frame_ms = int(frame_ms * len(frames) / max_frames)
        frames = [frames[i] for i in keep]
    imgs = []
    for f in frames:
        im = Image.fromarray(f)
        if im.width > width:
            im = im.resize((width, max(2, round(im.height * width / im.width))), Image.BILINEAR)
        imgs.append(im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
                    if hasattr(Image, "Quantize") else im.convert("P", palette=Image.ADAPTIVE, colors=colors))
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=max(20, int(frame_ms)), loop=0,
                 optimize=True)
    return len(imgs)


class GifFrames:
    """Frames for the GIF, scaled to ``width`` as they come; beyond 2 x ``max_frames`` every other one is dropped
    (and later ones thinned alike), so a long run keeps bounded memory and an even time spacing."""

    def __init__(self, width: int, max_frames: int):
        self.width, self.max_frames = width, max(1, max_frames)
        self.frames: list[np.ndarray] = []
        self.stamps: list[int] = []
        self._stride, self._seen = 1, 0

    def add(self, frame: np.ndarray, stamp_ns: int) -> None:
        from PIL import Image

        self._seen += 1
        if (self._seen - 1) % self._stride:
            return
        im = Image.fromarray(frame)
        if im.width > self.width:
            im = im.resize((self.width, max(2, round(im.height * self.width / im.width))), Image.BILINEAR)
        self.frames.append(np.asarray(im))
        self.stamps.append(stamp_ns)
        if len(self.frames) > 2 * self.max_frames:
            self.frames, self.stamps, self._stride = self.frames[::2], self.stamps[::2], self._stride * 2

    def save(self, path: Path, colors: int, default_ms: float) -> int:
        frame_ms = float(np.median(np.diff(self.stamps))) * 1e-6 if len(self.stamps) > 1 else default_ms
        return save_gif(path, self.frames, int(np.clip(frame_ms, 50, 2000)), self.width, self.max_frames, colors)


def write_rgb_png(path: Path, a: np.ndarray) -> None:
    from sigma_ros.data.datasets import write_png

    write_png(path, a, compress_level=6)


def histogram_table(labels: np.ndarray, class_names, num_classes: int) -> str:
    counts = np.bincount(np.asarray(labels).ravel(), minlength=num_classes)
    total = max(int(counts.sum()), 1)
    width = max([len("class")] + [len(str(n)) for n in class_names])
    lines = [f"  {'id':>3}  {'class':<{width}}  {'pixels':>9}  {'share':>6}"]
    for k in np.argsort(-counts):
        if counts[k] == 0:
            continue
        name = class_names[k] if k < len(class_names) else "?"
        lines.append(f"  {k:>3}  {name:<{width}}  {counts[k]:>9}  {100.0 * counts[k] / total:>5.1f}%")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# real-frame mode
def load_pair(rgb_path: str, x_path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (H,W,3) uint8, x) from files; an RGBA --rgb without --x is MFNet's RGB + thermal-in-alpha."""
    from PIL import Image

    from sigma_ros.data.datasets import DatasetError, read_image

    try:
        if x_path is None:
            with Image.open(rgb_path) as im:
                mode = im.mode
                if mode != "RGBA":
                    raise DemoError(f"{rgb_path}: no --x given and the image is not a 4-channel RGB+thermal PNG "
                                    f"(MFNet layout); it is mode {mode}. Pass the thermal/depth image with --x.")
                a = np.asarray(im)
            return np.array(a[..., :3]), np.array(a[..., 3])
        return np.array(read_image(rgb_path, "rgb")), np.array(read_image(x_path, "x"))  # writable for torch
    except DatasetError as e:
        raise DemoError(str(e)) from None
    except (OSError, SyntaxError) as e:
        raise DemoError(f"{rgb_path}: cannot read image ({e})") from None


def run_real(args) -> int:
    from sigma_ros.data.datasets import write_png
    from sigma_ros.postprocess import colorize, overlay
    from sigma_ros.segmenter import Segmenter

    ckpt = resolve_checkpoint(args.checkpoint)
    rgb, x = load_pair(args.rgb, args.x)
    modality = args.modality or ("depth" if args.x and "depth" in Path(args.x).name.lower() else "thermal")
    out = Path(args.out) if args.out else Path("demo_out") / Path(args.rgb).stem
    input_size = parse_size(args.input_size, "--input-size") if args.input_size else None
    t0 = time.perf_counter()
    try:
        seg = Segmenter.from_checkpoint(ckpt, class_config=args.config, device=args.device, modality=modality,
                                        input_size=input_size)
    except (ValueError, RuntimeError) as e:  # CheckpointError, class config, device: the messages say what
        raise DemoError(f"cannot load {ckpt}: {e}") from None
    t1 = time.perf_counter()
    labels = seg(rgb, x).labels
    t2 = time.perf_counter()
    color = colorize(labels, seg.palette)
    over = overlay(rgb, labels, seg.palette, alpha=args.alpha)
    x_vis = x_for_display(x, (rgb.shape[1], rgb.shape[0]), modality)
    strip = compose_strip(rgb, x_vis, over, labels, seg.class_names, seg.palette, x_name=modality)
    out.mkdir(parents=True, exist_ok=True)
    write_png(out / "label.png", labels.astype(np.uint8 if seg.num_classes <= 256 else np.uint16))
    write_rgb_png(out / "color.png", color)
    write_rgb_png(out / "overlay.png", over)
    write_rgb_png(out / "strip.png", strip)
    xdesc = f"{x.dtype} {x.shape[1]}x{x.shape[0]}" + (f"x{x.shape[2]}" if x.ndim == 3 else "")
    print(f"{args.rgb} ({rgb.shape[1]}x{rgb.shape[0]}) + "
          f"{args.x or 'thermal from the alpha channel'} ({modality}, {xdesc})")
    print(f"model: Sigma-{seg.config.variant} ({seg.num_classes} classes) from {ckpt} on {seg.device}; "
          f"load {t1 - t0:.2f} s, inference {1e3 * (t2 - t1):.0f} ms")
    print("class histogram:")
    print(histogram_table(labels, seg.class_names, seg.num_classes))
    print(f"wrote {out}/label.png (class ids), color.png, overlay.png, strip.png")
    return 0


# ------------------------------------------------------------------------------------------------------------------
# live mode: synthetic camera
class SyntheticCamera:
    """Street scenes that change every ``scene_seconds`` and pan slowly (a wider render, a moving window).
    Night and day alternate, so the GIF shows people that only the thermal camera sees."""

    def __init__(self, size: tuple[int, int], scene_seconds: float, rate: float, seed: int, n_scenes: int = 8):
        from sigma_ros.data.synthetic import make_scene

        self.w, self.h = size
        self.pan = max(8, self.w // 4)
        self.frames_per_scene = max(1, int(round(scene_seconds * rate)))
        self.scenes = [make_scene(seed * 1000 + k, self.h, self.w + self.pan, night=(k % 2 == 0))
                       for k in range(n_scenes)]

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        k, j = divmod(i, self.frames_per_scene)
        s = self.scenes[k % len(self.scenes)]
        off = int(round(self.pan * j / max(1, self.frames_per_scene - 1)))
        return (np.ascontiguousarray(s["rgb"][:, off: off + self.w]),
                np.ascontiguousarray(s["x"][:, off: off + self.w]))


def _ros_env(domain_id: int) -> dict:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               RCUTILS_COLORIZED_OUTPUT="0")
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated in Jazzy; it would override the discovery range
    return env


class NodeProcess:
    """The sigma_segmentation node as a subprocess, output to ``log_path``."""

    def __init__(self, checkpoint: Path, config: str | None, cpu_threads: int, domain_id: int, log_path: Path,
                 input_size: tuple[int, int] | None = None, alpha: float = 0.5):
        cmd = [sys.executable, "-m", "sigma_ros.ros.node", "--ros-args",
               "-r", f"__ns:=/{NODE_NAMESPACE}", "-r", f"rgb/image:={RGB_TOPIC}", "-r", f"x/image:={X_TOPIC}",
               "-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu", "-p", f"cpu_threads:={int(cpu_threads)}",
               "-p", f"overlay_alpha:={float(alpha)}"]
        if config:
            cmd += ["-p", f"config:={config}"]
        if input_size:
            cmd += ["-p", f"input_size:={input_size[0]}x{input_size[1]}"]
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=_ros_env(domain_id),
                                     stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 25) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0, maybe_signalled: bool = False) -> int | None:
        """SIGINT (the node's clean shutdown); SIGKILL only if it does not exit within ``timeout``.
        ``maybe_signalled``: a Ctrl-C in the terminal reached the node too; give it time to exit on that one
        (a second SIGINT during its shutdown would kill it)."""
        if maybe_signalled:
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._log.close()
                return None
        self._log.close()
        return self.proc.returncode


class LiveSession:
    """This process's ROS side: camera publishers, result and diagnostics subscribers, spun in a thread."""

    def __init__(self, domain_id: int, camera: SyntheticCamera, rate: float, thermal_encoding: str):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # read by rcl at init
        os.environ.pop("ROS_LOCALHOST_ONLY", None)
        self.rclpy = rclpy
        self.context = rclpy.Context()
        from rclpy.signals import SignalHandlerOptions

        # run_live handles Ctrl-C itself (stop streaming, write the outputs, stop the node)
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("sigma_demo_camera", context=self.context)
        self.camera, self.rate, self.thermal_encoding = camera, rate, thermal_encoding
        self.rgb_pub = self.node.create_publisher(Image, RGB_TOPIC, 10)
        self.x_pub = self.node.create_publisher(Image, X_TOPIC, 10)
        prefix = f"/{NODE_NAMESPACE}/sigma_segmentation"
        self.node_fqn = prefix
        self.overlay_topic, self.label_topic = f"{prefix}/overlay", f"{prefix}/label"
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.lock = threading.Lock()
        self.sent: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()  # stamp -> (rgb, x8)
        self.results: "collections.OrderedDict[int, dict]" = collections.OrderedDict()  # stamp -> {overlay, label}
        self.ready_results: collections.deque = collections.deque()  # (stamp, receive ns) complete pairs
        self.latest_diag: dict | None = None
        self.diag_time = -math.inf  # time.monotonic() of the newest report from our node
        self.published = 0
        self.received = 0
        self._subs = [
            self.node.create_subscription(Image, self.overlay_topic, lambda m: self._on_result(m, "overlay"), qos),
            self.node.create_subscription(Image, self.label_topic, lambda m: self._on_result(m, "label"), qos),
            self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10),
        ]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._spin_thread = threading.Thread(target=self._spin, name="demo_spin", daemon=True)
        self._spin_thread.start()
        self._cam_thread: threading.Thread | None = None

    def _spin(self) -> None:
        while self.context.ok() and not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down while waiting
                return

    def node_ready(self) -> bool:
        return (self.rgb_pub.get_subscription_count() > 0 and self.x_pub.get_subscription_count() > 0
                and self.node.count_publishers(self.overlay_topic) > 0)

    # camera ------------------------------------------------------------------------------------------------
    def start_camera(self) -> None:
        self._cam_thread = threading.Thread(target=self._camera_loop, name="demo_camera", daemon=True)
        self._cam_thread.start()

    def _camera_loop(self) -> None:
        from sigma_ros.image_codec import numpy_to_image

        period = 1.0 / self.rate
        t_next = time.monotonic()
        i = 0
        while not self._stop.is_set() and self.context.ok():
            rgb, x8 = self.camera.frame(i)
            stamp = time.time_ns()  # the node measures end-to-end latency against its (system) clock
            x = x8.astype(np.uint16) * np.uint16(257) if self.thermal_encoding == "mono16" else x8
            msgs = (numpy_to_image(rgb, "rgb8"), numpy_to_image(x, self.thermal_encoding))
            for m, frame_id in zip(msgs, ("demo_camera_color", "demo_camera_thermal")):
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 10**9)
                m.header.frame_id = frame_id
            with self.lock:
                self.sent[stamp] = (rgb, x8)
                while len(self.sent) > 128:  # ~13 s at 10 Hz: far beyond the node's bounded latency
                    self.sent.popitem(last=False)
            try:
                self.rgb_pub.publish(msgs[0])
                self.x_pub.publish(msgs[1])
            except Exception:  # context shut down under us
                return
            self.published += 1
            i += 1
            t_next += period
            delay = t_next - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                t_next = time.monotonic()  # fell behind (busy CPU): keep the rate, do not burst

    def stop_camera(self) -> None:
        self._stop.set()
        if self._cam_thread is not None:
            self._cam_thread.join(5)

    # results -----------------------------------------------------------------------------------------------
    def _on_result(self, msg, kind: str) -> None:
        from sigma_ros.image_codec import header_stamp_ns, image_to_numpy

        now = time.time_ns()
        stamp = header_stamp_ns(msg)
        with self.lock:
            entry = self.results.setdefault(stamp, {})
            entry[kind] = image_to_numpy(msg)
            if kind == "overlay":
                self.received += 1
                entry["received_ns"] = now
            if "overlay" in entry and "label" in entry:
                self.ready_results.append(stamp)
            while len(self.results) > 64:
                self.results.popitem(last=False)

    def take_results(self) -> list[dict]:
        """Complete results (overlay + label + the sent images), oldest first."""
        out = []
        with self.lock:
            while self.ready_results:
                stamp = self.ready_results.popleft()
                entry = self.results.pop(stamp, None)
                sent = self.sent.get(stamp)
                if entry is None or sent is None:
                    continue
                out.append(dict(entry, stamp=stamp, rgb=sent[0], x=sent[1]))
        return out

    def diagnostics(self) -> dict | None:
        """Key/values of the newest diagnostics report of the node (None before the first)."""
        with self.lock:
            return dict(self.latest_diag) if self.latest_diag else None

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.name.startswith(self.node_fqn + ":"):
                with self.lock:
                    self.latest_diag = {kv.key: kv.value for kv in st.values}
                    self.latest_diag["_message"] = st.message
                    self.latest_diag["_level"] = str(st.level[0] if isinstance(st.level, bytes) else st.level)
                    self.diag_time = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        try:
            self.executor.shutdown(timeout_sec=1)
            self.node.destroy_node()
        finally:
            self.rclpy.try_shutdown(context=self.context)
        self._spin_thread.join(2)


def _clear_previous(out: Path) -> None:
    """Remove files a previous demo run wrote (only ours), so strips of two runs never mix."""
    for sub in ("strips", "overlays", "labels"):
        d = out / sub
        if d.is_dir():
            for f in d.glob("*.png"):
                f.unlink()
    for name in ("demo.gif", "summary.json", "node.log"):
        (out / name).unlink(missing_ok=True)


def _pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def run_live(args) -> int:
    try:
        import rclpy  # noqa: F401
        from diagnostic_msgs.msg import DiagnosticArray  # noqa: F401
        from sensor_msgs.msg import Image  # noqa: F401
    except ImportError as e:
        raise DemoError(f"the live demo needs ROS 2 Python packages ({e}); run `bash scripts/setup.sh` (installs the "
                        "ros-jazzy-* wheels) or source a ROS 2 Jazzy installation. Real frames (--rgb/--x) need "
                        "no ROS.") from None
    from sigma_ros.data.datasets import write_png
    from sigma_ros.model import load_checkpoint
    from sigma_ros.postprocess import voc_palette

    if args.short:
        size_text = SHORT["size"] if args.size == "320x240" else args.size
        frames = args.frames or SHORT["frames"]
        duration = args.duration or SHORT["duration"]
    else:
        size_text, frames = args.size, args.frames
        duration = args.duration or (120.0 if frames else 20.0)
    size = parse_size(size_text, "--size")
    if args.rate <= 0 or duration <= 0 or (frames is not None and frames < 1):
        raise DemoError("--rate and --duration must be > 0 and --frames >= 1")
    ckpt = resolve_checkpoint(args.checkpoint)
    if not 0.0 <= args.alpha <= 1.0:
        raise DemoError(f"--alpha must be in [0, 1], got {args.alpha}")
    try:  # class names/palette for the strips; and a clear error now rather than from the node's log
        ck = load_checkpoint(ckpt, map_location="cpu")
    except ValueError as e:
        raise DemoError(f"cannot load {ckpt}: {e}") from None
    if args.config:
        from sigma_ros.classes import load_class_config

        try:
            cc = load_class_config(args.config)
        except ValueError as e:
            raise DemoError(f"--config: {e}") from None
        class_names, palette = cc.class_names, cc.palette
    else:
        class_names = ck.class_names or [str(k) for k in range(ck.config.num_classes)]
        palette = ck.palette if ck.palette is not None else voc_palette(ck.config.num_classes)
    model_text = f"Sigma-{ck.config.variant} ({ck.config.num_classes} classes)"
    del ck

    out = Path(args.out or "demo_out")
    for sub in ("strips", "overlays", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    input_size = parse_size(args.input_size, "--input-size") if args.input_size else None
    domain_id = args.domain_id if args.domain_id is not None else 1 + os.getpid() % 100
    print(f"sigma-ros demo: {model_text} from {ckpt}")
    where = f"at {input_size[0]}x{input_size[1]}" if input_size else "at the camera size"
    print(f"  node: sigma_segmentation on CPU, model {where} (log: {out / 'node.log'}); camera: synthetic RGB-thermal "
          f"{size[0]}x{size[1]} at {args.rate:g} Hz (rgb8 + {args.thermal_encoding}); ROS_DOMAIN_ID={domain_id}, "
          "localhost only")
    t_start = time.monotonic()
    camera = SyntheticCamera(size, args.scene_seconds, args.rate, args.seed)
    node = NodeProcess(ckpt, args.config, args.cpu_threads, domain_id, out / "node.log", input_size, args.alpha)
    session = None
    rc = 0
    gif = GifFrames(args.gif_width, args.gif_max_frames)
    t0: float | None = None
    latencies_ms: list[float] = []
    saved = 0
    node_rc: int | None = None
    diag = None
    stream_s = 0.0
    # Ctrl-C / SIGTERM while streaming: stop, and still write what arrived; a second one aborts at once.
    interrupted = threading.Event()
    got_sigint = []  # a terminal's Ctrl-C reaches the node too (same process group); a SIGTERM to us does not

    def on_signal(signum, _frame):
        got_sigint.append(signum == signal.SIGINT)
        if interrupted.is_set() or t0 is None:
            raise KeyboardInterrupt
        interrupted.set()

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        session = LiveSession(domain_id, camera, args.rate, args.thermal_encoding)
        print("  waiting for the node to load the model ...", flush=True)
        deadline = time.monotonic() + args.startup_timeout
        while not session.node_ready():
            if not node.alive():
                raise DemoError(f"the node exited during start-up (code {node.proc.returncode}):\n{node.log_tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"the node did not come up within {args.startup_timeout:.0f} s:\n{node.log_tail()}")
            time.sleep(0.1)
        startup_s = time.monotonic() - t_start
        limit = f"{duration:g} s" + (f" or {frames} frames" if frames else "")
        print(f"  node up after {startup_s:.1f} s; streaming for {limit} ...", flush=True)
        t0 = time.monotonic()
        session.start_camera()
        end = t0 + duration
        next_report = t0 + 5.0

        def drain() -> None:
            nonlocal saved
            for r in session.take_results():
                x_vis = x_for_display(r["x"], size)
                strip = compose_strip(r["rgb"], x_vis, r["overlay"], r["label"], class_names, palette)
                name = f"{saved:04d}.png"
                write_rgb_png(out / "strips" / f"strip_{name}", strip)
                write_rgb_png(out / "overlays" / f"overlay_{name}", r["overlay"])
                write_png(out / "labels" / f"label_{name}", r["label"])
                gif.add(strip, r["stamp"])
                latencies_ms.append((r["received_ns"] - r["stamp"]) * 1e-6)
                saved += 1

        reached = None  # when --frames results were in; then wait (briefly) for a diagnostics report that has them
        while time.monotonic() < end:
            if frames is not None and saved >= frames:
                reached = reached or time.monotonic()
                if session.diag_time > reached or time.monotonic() - reached > 2.5:
                    break
            if interrupted.is_set():
                print("\n  interrupted: stopping", file=sys.stderr)
                rc = 130
                break
            if not node.alive():
                time.sleep(0.2)  # a Ctrl-C reaches the node and us at once: let our handler run first
                if interrupted.is_set():
                    continue
                rc = 1
                print(f"sigma-ros demo: the node stopped unexpectedly (code {node.proc.returncode}):\n"
                      f"{node.log_tail()}", file=sys.stderr)
                break
            drain()
            if time.monotonic() >= next_report:
                print(f"  {time.monotonic() - t0:5.1f} s: {session.published} pairs sent, {saved} results",
                      flush=True)
                next_report += 5.0
            time.sleep(0.05)
        stream_s = time.monotonic() - t0
        diag = session.diagnostics()
        session.stop_camera()
        time.sleep(0.3)  # results of frames already in flight
        drain()
        if saved == 0 and rc == 0:
            rc = 1
            print(f"sigma-ros demo: no segmented frames arrived in {stream_s:.1f} s. Node log tail:\n"
                  f"{node.log_tail()}", file=sys.stderr)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the stream started
        print("\n  interrupted: stopping the node", file=sys.stderr)
        rc = 130
        if t0 is not None:
            stream_s = time.monotonic() - t0
        if session is not None:
            diag = session.diagnostics()
    finally:
        node_rc = node.stop(maybe_signalled=any(got_sigint))
        if session is not None:
            session.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)

    # outputs ---------------------------------------------------------------------------------------------------
    print(f"  writing {out / 'demo.gif'} ...", flush=True)
    gif_frames = gif.save(out / "demo.gif", int(np.clip(args.gif_colors, 2, 256)), 1000.0 / args.rate)
    measured = {
        "frames": saved, "pairs_sent": session.published if session else 0, "stream_seconds": round(stream_s, 2),
        "fps": round(saved / stream_s, 2) if stream_s > 0 else 0.0,
        "receive_latency_ms_p50": round(_pct(latencies_ms, 50), 1),
        "receive_latency_ms_p95": round(_pct(latencies_ms, 95), 1),
        "gif_frames": gif_frames, "node_exit_code": node_rc,
    }
    summary = {"checkpoint": str(ckpt), "model": model_text, "size": list(size), "rate_hz": args.rate,
               "input_size": list(input_size) if input_size else "native",
               "thermal_encoding": args.thermal_encoding, "domain_id": domain_id, "measured": measured,
               "diagnostics": diag, "class_names": list(class_names), "palette": np.asarray(palette).tolist(),
               "panel_top": CAPTION_H}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(diag, measured))
    print(f"wrote {saved} strips/overlays/labels PNGs to {out}/{{strips,overlays,labels}}/, "
          f"{out / 'demo.gif'} ({gif_frames} frames), {out / 'summary.json'}")
    if node_rc is None:
        print("sigma-ros demo: the node did not exit within 20 s of SIGINT and was killed", file=sys.stderr)
        rc = rc or 1
    elif node_rc != 0:
        print(f"sigma-ros demo: the node exited with code {node_rc}; see {out / 'node.log'}", file=sys.stderr)
        rc = rc or 1
    return rc


def format_summary(diag: dict | None, measured: dict) -> str:
    """The node's last diagnostics and what the demo measured, as a two-column table."""
    rows: list[tuple[str, str]] = []
    if diag:
        def ms(key):
            return f"{diag.get(key + '_p50', '?')} / {diag.get(key + '_p95', '?')} ms"

        rows += [
            ("status", diag.get("_message", "")),
            ("model", f"{diag.get('model', '?')}, {diag.get('device', '?')}, {diag.get('precision', '?')}, "
                      f"scan {diag.get('scan_backend', '?')}"),
            ("input rate rgb / thermal", f"{diag.get('rgb_rate_hz', '?')} / {diag.get('x_rate_hz', '?')} Hz"),
            ("pairs / output rate", f"{diag.get('pair_rate_hz', '?')} / {diag.get('output_rate_hz', '?')} Hz"),
            ("inference p50 / p95", ms("inference_latency_ms")),
            ("end-to-end p50 / p95", ms("end_to_end_latency_ms")),
            ("sync offset p50 / p95", ms("sync_offset_ms")),
            ("pairs / dropped (newer pair won)", f"{diag.get('pairs', '?')} / {diag.get('pairs_dropped', '?')}"),
            ("unpaired / decode errors", f"{diag.get('unpaired_dropped', '?')} / {diag.get('decode_errors', '?')}"),
        ]
    else:
        rows.append(("node diagnostics", "none received"))
    rows += [
        ("demo: results received", f"{measured['frames']} in {measured['stream_seconds']} s "
                                   f"({measured['fps']} FPS; {measured['pairs_sent']} pairs sent)"),
        ("demo: stamp -> overlay p50 / p95", f"{measured['receive_latency_ms_p50']} / "
                                            f"{measured['receive_latency_ms_p95']} ms"),
        ("node exit (SIGINT)", "clean (0)" if measured["node_exit_code"] == 0 else str(measured["node_exit_code"])),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join(["diagnostics summary (sigma_segmentation, last /diagnostics report before the stop)", line]
                     + [f"{k:<{width}}  {v}" for k, v in rows] + [line])

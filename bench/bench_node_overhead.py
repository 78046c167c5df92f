"""Node overhead per 640x480 RGB + thermal pair, excluding the model forward.

Runs the node's own per-frame code (sigma_ros.ros.node uses the same functions) with the network replaced by a stub
that returns precomputed logits, so what is left is the node's cost around the model:

  decode      sensor_msgs/Image -> numpy for both inputs (image_codec.image_to_numpy)
  pair        approximate-time pairing (sync.ApproximateTimeSync.add, two messages)
  preprocess  numpy -> normalised tensors (Segmenter.upload + Segmenter.inputs -> preprocess.upload/pair_inputs)
  model       the forward (the stub, or a real Sigma with --model)
  postprocess logits -> labels [+ softmax confidence] (Segmenter.postprocess: numba on the CPU;
              Segmenter.labels_on_device on the GPU path, left there)
  render      label/color/overlay arrays (ros.outputs.render_outputs: numpy on the CPU; on the GPU path drawn on the
              device and copied back, the frame's one synchronisation)
  encode      numpy -> sensor_msgs/Image messages (image_codec.numpy_to_image)
  publish     rclpy Publisher.publish of the output messages (no subscribers: message conversion only)

The node takes the GPU path (everything on the device up to the finished outputs) when the Segmenter runs on CUDA;
``--path host|device`` forces one path (``device`` on the CPU runs the torch code there, as a check). On a GPU every
stage above ends with a synchronisation so its time is its own; a second loop then runs the node's sequence as the
node does (Segmenter.segment_on_device + render_outputs, no extra waits) for the end-to-end figure.

Target: total <= 10 ms on the CI CPU. Usage:
    python bench/bench_node_overhead.py [--iters 50] [--width 640 --height 480] [--thermal mono8|mono16] [--json F]

With ``--model tiny --device cuda [--precision fp16]`` the stub is replaced by a real Sigma (random weights, the
GPU fast path): end to end - model is then the node's cost around the forward (image in -> output messages built),
the figure the speed issue bounds by 2 ms. Without rclpy (e.g. on the GPU machine) messages are built with a plain
stand-in class and the publish stage is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from sigma_ros.classes import DATASETS
from sigma_ros.data.synthetic import make_scene
from sigma_ros.image_codec import image_to_numpy, numpy_to_image
from sigma_ros.model import SigmaConfig, build_sigma
from sigma_ros.ros.outputs import render_outputs, to_messages
from sigma_ros.segmenter import Segmenter
from sigma_ros.sync import ApproximateTimeSync

from machine import cpu_name  # bench/machine.py (scripts run from bench/)


class Header:
    """std_msgs/Header stand-in for machines without ROS messages."""

    def __init__(self):
        self.stamp = type("Time", (), {"sec": 1, "nanosec": 0})()
        self.frame_id = "camera"


class StandInImage:
    """sensor_msgs/Image stand-in (image_codec is duck-typed)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)
        self.header = Header()


class StubNet(torch.nn.Module):
    """Stands in for Sigma: returns fixed logits of the input's size (the forward pass is what we exclude)."""

    def __init__(self, num_classes: int, height: int, width: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("logits", torch.randn(1, num_classes, height, width, generator=g))  # moves with .to()

    def forward(self, rgb, x):
        return self.logits.expand(rgb.shape[0], -1, -1, -1)


STAGES = ("decode", "pair", "preprocess", "model", "postprocess", "render", "encode", "publish")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--thermal", choices=("mono8", "mono16"), default="mono16")
    ap.add_argument("--confidence", action="store_true", help="also compute and encode ~/confidence")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--model", default=None, help="time a real Sigma of this variant instead of the stub")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--path", choices=("auto", "host", "device"), default="auto",
                    help="auto: the node's choice (device on CUDA); host: postprocess/render in numpy; device: torch")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    h, w = args.height, args.width
    classes = DATASETS["mfnet"]
    if args.model:
        cfg = SigmaConfig.from_variant(args.model, num_classes=classes.num_classes)
        torch.manual_seed(0)
        net = build_sigma(cfg)
    else:
        cfg, net = SigmaConfig.micro(num_classes=classes.num_classes), StubNet(classes.num_classes, h, w)
    seg = Segmenter(net, cfg, class_names=classes.class_names, palette=classes.palette, device=args.device,
                    precision=args.precision)
    on_device = seg.draws_on_device if args.path == "auto" else args.path == "device"
    barrier = torch.cuda.synchronize if seg.device.type == "cuda" else (lambda: None)
    scene = make_scene(0, h, w)
    x = scene["x"].astype(np.uint16) << 8 if args.thermal == "mono16" else scene["x"]
    try:
        from sensor_msgs.msg import Image as msg_type
    except ImportError:
        msg_type = StandInImage
    rgb_msg = numpy_to_image(scene["rgb"], "rgb8", header=Header(), msg_type=msg_type)
    x_msg = numpy_to_image(x, args.thermal, header=Header(), msg_type=msg_type)
    for m in (rgb_msg, x_msg):
        m.header.stamp.sec, m.header.frame_id = 1, "camera"

    publishers = None
    try:
        import rclpy
        from sensor_msgs.msg import Image

        context = rclpy.Context()
        rclpy.init(context=context, domain_id=int(os.environ.get("ROS_DOMAIN_ID", "0")))
        ros_node = rclpy.create_node("bench_node_overhead", context=context)
        publishers = {n: ros_node.create_publisher(Image, f"~/{n}", 2) for n in ("label", "color", "overlay",
                                                                                   "confidence")}
    except ImportError:
        print("(rclpy not importable: the publish stage is skipped)")
    render_kw = dict(alpha=0.5, num_classes=seg.num_classes, want_color=True, want_overlay=True)
    sync = ApproximateTimeSync(num_inputs=2, queue_size=10, slop=0.05)
    stamps = iter(range(1, 1 << 30))

    def decode_and_pair():
        stamp = next(stamps) * 33_000_000
        rgb, xa = image_to_numpy(rgb_msg), image_to_numpy(x_msg)
        sync.add(0, stamp, rgb)
        match = sync.add(1, stamp + 1_000_000, xa)
        assert match is not None
        return rgb, xa

    def send(outputs):
        msgs = to_messages(outputs, rgb_msg.header, msg_type=msg_type)
        if publishers is not None:
            for name, msg in msgs.items():
                publishers[name].publish(msg)

    # 1. stage by stage, each stage waited for (on a GPU) so that its time is its own
    times = {s: [] for s in STAGES}
    totals = []
    for i in range(args.warmup + args.iters):
        t = [time.perf_counter()]
        stamp = (i + 1) * 33_000_000
        rgb = image_to_numpy(rgb_msg)
        xa = image_to_numpy(x_msg)
        t.append(time.perf_counter())
        sync.add(0, stamp, rgb)
        assert sync.add(1, stamp + 1_000_000, xa) is not None
        t.append(time.perf_counter())
        with torch.inference_mode():
            rgb_dev, x_dev = seg.upload(rgb, xa)
            rgb_t, x_t = seg.inputs(rgb_dev, x_dev)
            barrier()
            t.append(time.perf_counter())
            logits = seg.logits(rgb_t[None], x_t[None])[0]  # the stub: precomputed
            barrier()
            t.append(time.perf_counter())
            if on_device:
                labels, conf = seg.labels_on_device(logits, rgb.shape[:2], confidence=args.confidence)
                image = rgb_dev
                barrier()
            else:
                result = seg.postprocess(logits, rgb.shape[:2], confidence=args.confidence)
                labels, conf, image = result.labels, result.confidence, rgb
        t.append(time.perf_counter())
        outputs = render_outputs(labels, image, seg.palette, confidence=conf, **render_kw)
        t.append(time.perf_counter())
        msgs = to_messages(outputs, rgb_msg.header, msg_type=msg_type)
        t.append(time.perf_counter())
        if publishers is not None:
            for name, msg in msgs.items():
                publishers[name].publish(msg)
        t.append(time.perf_counter())
        if i >= args.warmup:
            for s, a, b in zip(STAGES, t[:-1], t[1:]):
                times[s].append((b - a) * 1e3)
            totals.append((t[-1] - t[0]) * 1e3)

    # 2. the node's sequence as the node runs it (sigma_ros.ros.node.SegmentationNode._process), no extra waits
    sync = ApproximateTimeSync(num_inputs=2, queue_size=10, slop=0.05)
    end_to_end = []
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        rgb, xa = decode_and_pair()
        if on_device:
            res = seg.segment_on_device(rgb, xa, confidence=args.confidence)
            image = res.rgb
        else:
            res = seg(rgb, xa, confidence=args.confidence)
            image = rgb
        send(render_outputs(res.labels, image, seg.palette, confidence=res.confidence, **render_kw))
        if i >= args.warmup:
            end_to_end.append((time.perf_counter() - t0) * 1e3)

    path = "device (torch, GPU-resident)" if on_device else "host (numba/numpy)"
    print(f"\nsigma_ros per-frame cost per {w}x{h} pair (rgb8 + {args.thermal})"
          + ("" if args.model else ", model forward stubbed") + f"; postprocess/render path: {path}")
    print(f"machine: {platform.node()} | {cpu_name()} | {os.cpu_count()} cores | torch {torch.__version__} "
          f"({torch.get_num_threads()} threads) | numpy {np.__version__} | python {platform.python_version()} | "
          f"load average {os.getloadavg()[0]:.1f} | device {seg.describe()['device']}")
    outs = ", ".join(f"{k} {v[1]}" for k, v in outputs.items())
    print(f"outputs: {outs}; {args.iters} iterations after {args.warmup} warm-up\n")
    print(f"{'stage':<13}{'median ms':>10}{'p95 ms':>9}")
    shown = [s for s in STAGES if times[s] and (publishers is not None or s != "publish")]
    for s in shown:
        print(f"{s:<13}{np.median(times[s]):>10.2f}{np.percentile(times[s], 95):>9.2f}")
    total = float(np.median(totals))
    model = float(np.median(times["model"]))
    e2e = float(np.median(end_to_end))
    print(f"{'total':<13}{total:>10.2f}{np.percentile(totals, 95):>9.2f}   (stages waited for one by one)")
    print(f"{'end to end':<13}{e2e:>10.2f}{np.percentile(end_to_end, 95):>9.2f}   (the node's sequence, no extra waits)")
    node = e2e - model
    if args.model:
        print(f"\nSigma-{args.model} on {seg.describe()['device']} ({args.precision}, fast path {seg.fast}): "
              f"end-to-end {e2e:.2f} ms = model {model:.2f} ms + node {node:.2f} ms "
              f"(target: node <= 2 ms: {'PASS' if node <= 2.0 else 'FAIL'})")
    else:
        print(f"node overhead (end to end - model stub): {node:.2f} ms "
              f"(target <= 10 ms: {'PASS' if node <= 10.0 else 'FAIL'})")
    if args.json:
        report = {
            "machine": {"host": platform.node(), "cpu": cpu_name(), "cores": os.cpu_count(),
                        "device": seg.describe()["device"], "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "python": platform.python_version()},
            "config": {"width": w, "height": h, "thermal": args.thermal, "confidence": args.confidence,
                       "model": args.model or "stub", "precision": args.precision, "fast_path": seg.fast,
                       "path": "device" if on_device else "host", "iters": args.iters, "warmup": args.warmup},
            "stages_ms": {s: {"median": float(np.median(times[s])), "p95": float(np.percentile(times[s], 95))}
                          for s in shown},
            "total_ms": total, "end_to_end_ms": e2e, "model_ms": model, "node_ms": node,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if publishers is not None:
        ros_node.destroy_node()
        rclpy.try_shutdown(context=context)
    return 0


if __name__ == "__main__":
    sys.exit(main())

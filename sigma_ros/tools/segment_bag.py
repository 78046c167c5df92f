"""``sigma-ros segment-bag``: offline inference over a recorded bag.

Reads a rosbag2 bag (sqlite3 or MCAP, or a bare .mcap file) with the rosbags library (no ROS needed), pairs the RGB
and X image topics with the node's approximate-time policy, runs the checkpoint on every pair and writes an MCAP bag
with the input topics plus ``<prefix>/label`` (mono8, 16UC1 beyond 256 classes), ``<prefix>/color`` and
``<prefix>/overlay`` (rgb8) -- the node's topics, each carrying the RGB image's header -- so the result plays in
RViz (``ros2 bag play``) and opens in Foxglove. Optional PNGs and a GIF/MP4 of the overlays.

``--out X.mcap`` writes one MCAP file (what Foxglove opens; rosbags and ``ros2 bag play`` read it too);
``--out DIR`` writes a rosbag2 folder (metadata.yaml + DIR.mcap).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sigma_ros.data.bags import BagError, get_typestore, open_bag, topic_summary

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", metavar="IN", help="input bag: rosbag2 folder (sqlite3 or mcap) or a .mcap file")
    p.add_argument("--out", required=True, help="output: X.mcap (one MCAP file) or a folder (rosbag2, MCAP storage)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--rgb-topic", required=True, help="sensor_msgs/Image (or CompressedImage) RGB topic")
    p.add_argument("--x-topic", required=True, help="thermal/depth image topic")
    p.add_argument("--slop", type=float, default=0.05, help="max stamp difference (s) of a pair [0.05]")
    p.add_argument("--queue-size", type=int, default=10, help="pairing queue per topic [10]")
    p.add_argument("--prefix", default="/sigma_segmentation",
                   help="namespace of the output topics (the node's by default) [/sigma_segmentation]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda [auto]")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--batch-size", type=int, default=1, help="pairs per forward pass [1]")
    p.add_argument("--classes", "--config", dest="config", default=None,
                   help="class config: mfnet|pst900|nyu|sunrgbd or a YAML (for checkpoints without class names)")
    p.add_argument("--modality", choices=["thermal", "depth"], default=None,
                   help="[the checkpoint's, else thermal]")
    p.add_argument("--depth-range", default=None, metavar="MIN,MAX", help="metres [checkpoint's, else 0,10]")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight [0.5]")
    p.add_argument("--confidence", action="store_true", help="also write <prefix>/confidence (32FC1)")
    p.add_argument("--no-inputs", action="store_true", help="do not copy the RGB/X topics into the output")
    p.add_argument("--every", type=int, default=1, help="segment every N-th pair [1]")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N segmented pairs")
    p.add_argument("--png-dir", default=None, help="also write label/, color/ and overlay/ PNGs here")
    p.add_argument("--video", default=None, help="overlay video: .gif (Pillow) or .mp4 (needs imageio-ffmpeg)")
    p.add_argument("--video-width", type=int, default=640, help="max video width in pixels [640]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


# ------------------------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------------------------
def decode_image(msg, msgtype: str, topic: str) -> np.ndarray:
    """Image or CompressedImage (jpeg/png, compressedDepth) -> numpy in the image_codec layout."""
    from sigma_ros.image_codec import decode_message

    if msgtype not in (IMAGE, COMPRESSED):
        raise BagError(f"topic {topic} carries {msgtype}; expected {IMAGE} or {COMPRESSED}")
    try:
        return decode_message(msg)
    except ValueError as e:
        raise BagError(f"topic {topic}: {e}") from None


# ------------------------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------------------------
class BagOutput:
    """rosbags MCAP writer; for a ``.mcap`` target, the folder's single file is moved into place at the end."""

    def __init__(self, out: Path):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.out = out
        self.single = out.suffix == ".mcap"
        if self.single:
            self.tmpdir = Path(tempfile.mkdtemp(prefix=".segment_bag.", dir=out.parent))
            self.bagdir = self.tmpdir / out.stem
        else:
            self.tmpdir, self.bagdir = None, out
        self.writer = Writer(self.bagdir, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.conns = {}

    def connection(self, topic: str, msgtype: str, typestore):
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=typestore)
        return self.conns[topic]

    def write(self, topic: str, msgtype: str, typestore, log_ns: int, data) -> None:
        self.writer.write(self.connection(topic, msgtype, typestore), int(log_ns), data)

    def close(self, ok: bool = True) -> Path:
        self.writer.close()
        if not self.single:
            return self.bagdir
        try:
            if ok:
                files = sorted(self.bagdir.glob("*.mcap"))
                if len(files) != 1:
                    raise BagError(f"expected one .mcap file in {self.bagdir}, found {len(files)}")
                files[0].replace(self.out)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        return self.out


class VideoOutput:
    def __init__(self, path: Path, max_width: int):
        self.path, self.max_width, self.frames, self.stamps = path, max_width, [], []
        suffix = path.suffix.lower()
        if suffix not in (".gif", ".mp4"):
            raise ValueError(f"--video must end in .gif or .mp4, got {path}")
        if suffix == ".mp4":
            try:
                import imageio_ffmpeg  # noqa: F401
            except ImportError:
                raise ValueError("--video .mp4 needs the optional package imageio-ffmpeg "
                                 "(pip install imageio-ffmpeg); or write a .gif") from None

    def add(self, rgb: np.ndarray, stamp_ns: int) -> None:
        from PIL import Image

        img = Image.fromarray(rgb)
        if img.width > self.max_width:
            img = img.resize((self.max_width, max(2, round(img.height * self.max_width / img.width))),
                             Image.BILINEAR)
        if self.path.suffix.lower() == ".mp4" and (img.width % 2 or img.height % 2):
            img = img.resize((img.width // 2 * 2, img.height // 2 * 2), Image.BILINEAR)  # yuv420p needs even sizes
        self.frames.append(np.asarray(img))
        self.stamps.append(stamp_ns)

    def fps(self) -> float:
        if len(self.stamps) < 2:
            return 10.0
        dt = np.median(np.diff(np.asarray(self.stamps, dtype=np.float64))) / 1e9
        return float(np.clip(1.0 / dt if dt > 0 else 10.0, 1.0, 60.0))

    def close(self) -> Path | None:
        if not self.frames:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fps = self.fps()
        if self.path.suffix.lower() == ".gif":
            from PIL import Image

            imgs = [Image.fromarray(f) for f in self.frames]
            imgs[0].save(self.path, save_all=True, append_images=imgs[1:], duration=int(round(1000 / fps)), loop=0)
        else:
            import imageio_ffmpeg

            h, w = self.frames[0].shape[:2]
            gen = imageio_ffmpeg.write_frames(str(self.path), (w, h), fps=fps, codec="libx264",
                                              pix_fmt_out="yuv420p", macro_block_size=1)
            gen.send(None)
            for f in self.frames:
                gen.send(np.ascontiguousarray(f))
            gen.close()
        return self.path


# ------------------------------------------------------------------------------------------------------------------
def run(args) -> int:
    try:
        return _run(args)
    except (ValueError, RuntimeError) as e:  # BagError, CheckpointError, ImageDecodeError... carry full messages
        print(f"sigma-ros segment-bag: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch
    from tqdm import tqdm

    from sigma_ros.image_codec import header_stamp_ns, numpy_to_image
    from sigma_ros.ros.outputs import render_outputs
    from sigma_ros.sync import ApproximateTimeSync
    from sigma_ros.segmenter import Segmenter
    from sigma_ros.tools.common import parse_range

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.every < 1 or args.batch_size < 1:
        raise ValueError("--every and --batch-size must be >= 1")
    bag_path, out = Path(args.bag), Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    if out.resolve() == bag_path.resolve():
        raise ValueError("--out must differ from the input bag")
    video = VideoOutput(Path(args.video), args.video_width) if args.video else None

    reader = open_bag(bag_path)
    try:
        conns = {c.topic: c for c in reader.connections}
        for t in (args.rgb_topic, args.x_topic):
            if t not in conns:
                raise BagError(f"bag {bag_path} has no topic {t}; its topics: {topic_summary(reader)}")
            if conns[t].msgtype not in (IMAGE, COMPRESSED):
                raise BagError(f"topic {t} in {bag_path} carries {conns[t].msgtype}, not an image")
        in_conns = [c for c in reader.connections if c.topic in (args.rgb_topic, args.x_topic)]
        total = sum(c.msgcount for c in in_conns)

        seg = Segmenter.from_checkpoint(args.checkpoint, class_config=args.config, device=args.device,
                                        precision=args.precision, modality=args.modality,
                                        depth_range=parse_range(args.depth_range))
        if seg.checkpoint_extra.get("blank"):
            print(f"warning: {args.checkpoint} was trained with the {seg.checkpoint_extra['blank']} input blanked "
                  f"(a modality-ablation model); segment-bag feeds both inputs", file=sys.stderr)

        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        bag_out = BagOutput(out)
        out_store = get_typestore("jazzy")  # sensor_msgs/Image and CompressedImage: same in every ROS 2 distro
        Image = out_store.types[IMAGE]
        png_dir = Path(args.png_dir) if args.png_dir else None
        if png_dir:
            for sub in ("label", "color", "overlay"):
                (png_dir / sub).mkdir(parents=True, exist_ok=True)
        prefix = "/" + args.prefix.strip("/") if args.prefix.strip("/") else ""

        sync = ApproximateTimeSync(2, queue_size=args.queue_size, slop=args.slop)
        pending: list = []  # (rgb array, x array, rgb msg, log time) waiting for a batch
        stats = {"pairs": 0, "segmented": 0, "written": 0}
        t0 = time.perf_counter()
        infer_s = 0.0

        def flush():
            nonlocal infer_s
            if not pending:
                return
            t = time.perf_counter()
            results = seg.segment_batch([p[0] for p in pending], [p[1] for p in pending], confidence=args.confidence)
            infer_s += time.perf_counter() - t
            for (rgb, _x, rgb_msg, log_ns), res in zip(pending, results):
                outs = render_outputs(res.labels, rgb, seg.palette, alpha=args.alpha, num_classes=seg.num_classes,
                                      want_color=True, want_overlay=True, confidence=res.confidence)
                for name, (arr, enc) in outs.items():
                    msg = numpy_to_image(arr, enc, header=rgb_msg.header, msg_type=Image)
                    bag_out.write(f"{prefix}/{name}", IMAGE, out_store, log_ns, out_store.serialize_cdr(msg, IMAGE))
                    stats["written"] += 1
                stamp = header_stamp_ns(rgb_msg)
                if png_dir:
                    _write_pngs(png_dir, f"{stats['segmented']:06d}_{stamp}", outs)
                if video is not None:
                    video.add(outs["overlay"][0], stamp)
                stats["segmented"] += 1
            pending.clear()

        ok = False
        try:
            bar = tqdm(total=total, desc="segment-bag", unit="msg", dynamic_ncols=True)
            done = False
            for conn, log_ns, raw in reader.messages(connections=in_conns):
                bar.update(1)
                if not args.no_inputs:
                    bag_out.write(conn.topic, conn.msgtype, out_store, log_ns, raw)
                if done:
                    continue
                try:
                    msg = out_store.deserialize_cdr(raw, conn.msgtype)
                except Exception as e:
                    raise BagError(f"bag {bag_path}: cannot deserialize a {conn.msgtype} on {conn.topic}: {e}") from None
                index = 0 if conn.topic == args.rgb_topic else 1
                match = sync.add(index, header_stamp_ns(msg), (msg, conn.msgtype, conn.topic, log_ns))
                if match is None:
                    continue
                stats["pairs"] += 1
                if (stats["pairs"] - 1) % args.every:
                    continue
                (rmsg, rtype, rtopic, rlog), (xmsg, xtype, xtopic, xlog) = match.msgs
                rgb = decode_image(rmsg, rtype, rtopic)
                if rgb.ndim != 3:
                    raise BagError(f"topic {rtopic}: RGB images must have 3 channels, got shape {rgb.shape}")
                pending.append((rgb, decode_image(xmsg, xtype, xtopic), rmsg, max(rlog, xlog)))
                if len(pending) >= args.batch_size:
                    flush()
                if args.max_frames and stats["segmented"] + len(pending) >= args.max_frames:
                    flush()
                    done = True  # keep copying the inputs, stop segmenting
                    if args.no_inputs:
                        break
                if stats["segmented"]:
                    bar.set_postfix(frames=stats["segmented"])
            flush()
            bar.close()
            ok = True
        finally:
            written = bag_out.close(ok=ok)
        video_path = video.close() if video is not None else None
    finally:
        reader.close()

    dt = time.perf_counter() - t0
    st = sync.stats()
    print(f"segmented {stats['segmented']} of {stats['pairs']} pairs ({sum(st.dropped)} unpaired messages) in "
          f"{dt:.1f} s; inference {infer_s:.1f} s ({stats['segmented'] / max(infer_s, 1e-9):.2f} frames/s on "
          f"{seg.device})")
    print(f"output bag: {written}  topics: {prefix}/label, {prefix}/color, {prefix}/overlay"
          + (f", {prefix}/confidence" if args.confidence else "")
          + ("" if args.no_inputs else f" + {args.rgb_topic}, {args.x_topic}"))
    if png_dir:
        print(f"PNGs: {png_dir}/{{label,color,overlay}}/")
    if video_path:
        print(f"video: {video_path}")
    if stats["segmented"] == 0:
        print(f"warning: no RGB/X pairs within --slop {args.slop} s were found", file=sys.stderr)
        return 1
    return 0


def _write_pngs(png_dir: Path, stem: str, outs: dict) -> None:
    from PIL import Image

    label, enc = outs["label"]
    Image.fromarray(label).save(png_dir / "label" / f"{stem}.png")  # uint8 -> L, uint16 -> I;16
    Image.fromarray(outs["color"][0]).save(png_dir / "color" / f"{stem}.png")
    Image.fromarray(outs["overlay"][0]).save(png_dir / "overlay" / f"{stem}.png")

"""Extract synchronized RGB-X(-label) frames from rosbag2 bags into the Sigma dataset layout (no ROS needed).

Pipeline per bag: rosbags Reader -> header stamps read straight from the CDR bytes -> the same approximate-time
policy as the node (:mod:`sigma_ros.sync`) in bag receive order -> only matched messages are deserialised and
decoded (:mod:`sigma_ros.image_codec`, Image and CompressedImage) -> lossless PNGs written atomically:

    OUT/RGB/<name>.png     8-bit RGB
    OUT/Modal/<name>.png   X as recorded: mono8 -> 8-bit, mono16/16UC1 -> 16-bit (radiometric values kept),
                           32FC1 depth (metres) -> 16-bit millimetres (round(d * 1000); NaN/inf/<= 0/> 65.535 m -> 0,
                           i.e. invalid), colour X -> 8-bit RGB. X of another size is resized to the RGB size
                           (bilinear for thermal, nearest for depth).
    OUT/Label/<name>.png   8-bit class indices (only with --label-topic; then only triplets are written)
    OUT/train.txt, OUT/test.txt, OUT/manifest.json

``<name>`` is ``<bag name>_<rgb stamp in ns, 19 digits>``, so re-running is idempotent and resumes: frames whose
files exist are skipped (files are written atomically, so an existing file is complete). The train/test split is
a seeded hash of the frame name (or of its time block, ``split_block`` seconds), so a frame keeps its split when
bags are added. A bag that cannot be read is reported with its name and the reason and the others go on; what was
written before stays, and the lists and manifest always describe the frames on disk.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sigma_ros.data.bags import (
    IMAGE_TYPES, BagError, bag_name, cdr_header_stamp_ns, get_typestore, open_bag, topic_summary,
)
from sigma_ros.data.datasets import write_png
from sigma_ros.image_codec import ImageDecodeError, decode_message
from sigma_ros.sync import ApproximateTimeSync

__all__ = ["ExtractConfig", "ExtractSummary", "BagReport", "extract", "depth_to_mm", "split_of"]

MANIFEST_FORMAT = "sigma_ros.extract/1"
NS = 1_000_000_000


@dataclass
class ExtractConfig:
    rgb_topic: str
    x_topic: str
    label_topic: str | None = None
    slop: float = 0.05  # seconds, inclusive (see sigma_ros.sync)
    queue_size: int = 30  # per topic; larger than the node's default: bag receive order can lag more
    every: int = 1  # keep every N-th pair (per bag)
    min_interval: float = 0.0  # seconds between kept pairs (per bag, by RGB stamp)
    test_fraction: float = 0.2
    seed: int = 0
    split_block: float = 0.0  # seconds; > 0 splits whole time blocks (keeps near-duplicates on one side)
    stamp: str = "header"  # "header" (message stamps) or "bag" (receive time)
    modality: str = "auto"  # thermal | depth | auto (32FC1/16UC1 -> depth, else thermal)
    depth_scale: float = 1000.0  # 32FC1 metres -> uint16 units (1000: millimetres)
    workers: int = 0  # PNG writer threads (0: min(8, CPUs))
    progress: bool = True

    def validate(self) -> None:
        if not self.rgb_topic or not self.x_topic:
            raise ValueError("both --rgb-topic and --x-topic are required")
        if len({self.rgb_topic, self.x_topic, self.label_topic} - {None}) != 2 + bool(self.label_topic):
            raise ValueError("--rgb-topic, --x-topic and --label-topic must be different topics")
        if self.slop < 0 or self.queue_size < 1 or self.every < 1 or self.min_interval < 0:
            raise ValueError("--slop and --min-interval must be >= 0, --queue-size and --every >= 1")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"--test-fraction must be in [0, 1], got {self.test_fraction}")
        if self.stamp not in ("header", "bag"):
            raise ValueError(f"--stamp must be header or bag, got {self.stamp!r}")
        if self.modality not in ("auto", "thermal", "depth"):
            raise ValueError(f"--modality must be auto, thermal or depth, got {self.modality!r}")


@dataclass
class BagReport:
    path: str
    name: str
    status: str = "pending"  # ok | error
    error: str | None = None
    storage: str | None = None
    messages: dict = field(default_factory=dict)  # topic -> messages read
    pairs: int = 0  # synchronized sets found
    written: int = 0
    skipped: int = 0  # already on disk
    rewritten: int = 0  # on disk but paired differently before
    subsampled: int = 0  # left out by --every / --min-interval
    decode_errors: int = 0
    dropped: dict = field(default_factory=dict)  # topic -> unmatched messages
    offsets_ns: list = field(default_factory=list)  # |x - rgb| of the pairs kept


@dataclass
class ExtractSummary:
    out_dir: Path
    bags: list
    total_frames: int = 0
    train: int = 0
    test: int = 0

    def _sum(self, attr):
        return sum(getattr(b, attr) for b in self.bags)

    @property
    def pairs(self) -> int:
        return self._sum("pairs")

    @property
    def written(self) -> int:
        return self._sum("written")

    @property
    def skipped(self) -> int:
        return self._sum("skipped")

    @property
    def subsampled(self) -> int:
        return self._sum("subsampled")

    @property
    def decode_errors(self) -> int:
        return self._sum("decode_errors")

    @property
    def dropped(self) -> int:
        return sum(sum(b.dropped.values()) for b in self.bags)

    @property
    def failed(self) -> list:
        return [b for b in self.bags if b.status != "ok"]

    def offsets_ms(self) -> tuple[float | None, float | None]:
        off = [o for b in self.bags for o in b.offsets_ns]
        if not off:
            return None, None
        return float(np.mean(off)) / 1e6, float(np.max(off)) / 1e6

    def format(self, slop: float | None = None) -> str:
        lines = [f"sigma-ros extract: {len(self.bags)} bag(s) -> {self.out_dir}"]
        for b in self.bags:
            msgs = ", ".join(f"{t} {n}" for t, n in b.messages.items()) or "no messages read"
            state = "ok" if b.status == "ok" else "FAILED (below)"
            lines.append(f"  {b.name} [{b.storage or '?'}]: {msgs}; pairs {b.pairs}, written {b.written}, "
                         f"skipped {b.skipped}, subsampled {b.subsampled}, decode errors {b.decode_errors} - {state}")
        dropped = {}
        for b in self.bags:
            for t, n in b.dropped.items():
                dropped[t] = dropped.get(t, 0) + n
        lines.append(f"pairs found {self.pairs}, written {self.written}, skipped (already extracted) {self.skipped}, "
                     f"left out by --every/--min-interval {self.subsampled}, decode errors {self.decode_errors}")
        lines.append("unmatched messages dropped by the synchronizer: " +
                     (", ".join(f"{t} {n}" for t, n in dropped.items()) if dropped else "0"))
        mean, mx = self.offsets_ms()
        if mean is not None:
            tail = f" (slop {slop * 1e3:.0f} ms)" if slop is not None else ""
            lines.append(f"sync offset |x - rgb|: mean {mean:.1f} ms, max {mx:.1f} ms{tail}")
        lines.append(f"dataset: {self.total_frames} frames (train {self.train}, test {self.test}) -> "
                     f"{self.out_dir / 'train.txt'}, {self.out_dir / 'test.txt'}, {self.out_dir / 'manifest.json'}")
        if self.failed:
            lines.append(f"{len(self.failed)} bag(s) failed:")
            lines.extend(f"  {b.error}" for b in self.failed)
        return "\n".join(lines)


# ---- conversions ------------------------------------------------------------------------------------------

def depth_to_mm(depth: np.ndarray, scale: float = 1000.0) -> np.ndarray:
    """32FC1 depth in metres -> uint16 (millimetres by default); NaN, inf, <= 0 and out-of-range -> 0 (invalid)."""
    d = np.round(np.asarray(depth, dtype=np.float32) * np.float32(scale))
    valid = np.isfinite(d) & (d > 0) & (d <= 65535)
    return np.where(valid, d, 0).astype(np.uint16)


def _resize(a: np.ndarray, size_wh: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    modes = getattr(Image, "Resampling", Image)  # Pillow < 9.1 has the constants on Image itself
    resample = modes.NEAREST if nearest else modes.BILINEAR
    if a.dtype == np.uint8:
        return np.asarray(Image.fromarray(a).resize(size_wh, resample))
    f = np.asarray(Image.fromarray(a.astype(np.float32), "F").resize(size_wh, resample))
    return np.clip(np.round(f), 0, np.iinfo(a.dtype).max).astype(a.dtype)


def split_of(key: str, seed: int, test_fraction: float) -> str:
    """Deterministic, stable split of one key (frame name or time block)."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0 ** 64
    return "test" if u < test_fraction else "train"


# ---- the extraction ---------------------------------------------------------------------------------------

def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_manifest(out: Path, cfg: ExtractConfig) -> dict:
    path = out / "manifest.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable manifest ({e}); move it away to start over") from None
    topics = doc.get("topics", {})
    want = {"rgb": cfg.rgb_topic, "x": cfg.x_topic, "label": cfg.label_topic}
    if topics and topics != want:
        raise ValueError(f"{out} holds an extraction of topics {topics}; this run asks for {want}. "
                         "Use another --out directory or the same topics.")
    return doc


class _Extractor:
    def __init__(self, out: Path, cfg: ExtractConfig, old: dict, log: Callable[[str], None]):
        self.out, self.cfg, self.log = out, cfg, log
        self.old_frames = {f["name"]: f for f in old.get("frames", [])}
        self.typestore = get_typestore("jazzy")
        self.frames: dict[str, dict] = {}
        self.modality = old.get("modality")
        self.warned: set = set()
        for sub in ("RGB", "Modal") + (("Label",) if cfg.label_topic else ()):
            (out / sub).mkdir(parents=True, exist_ok=True)
        # PNG encoding (zlib, GIL released) is most of the cost: a few writer threads encode while the main thread
        # reads and decodes the next messages. A frame counts as written once all its files are complete.
        workers = cfg.workers or min(8, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="png")
        self.max_pending = 2 * max(workers, 1)
        self.pending: deque = deque()  # (name, entry, futures, report)

    def _complete_oldest(self) -> None:
        name, entry, futures, report = self.pending.popleft()
        errors = [f.exception() for f in futures]  # waits for each
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise error
        report.written += 1
        self.frames[name] = entry

    def drain(self) -> None:
        """Wait for every frame in flight; the first write error is raised after all have settled."""
        first = None
        while self.pending:
            try:
                self._complete_oldest()
            except BaseException as e:  # noqa: B036 - keep settling the others, re-raise the first
                first = first or e
        if first is not None:
            raise first

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self.pool.shutdown(wait=True)

    def warn_once(self, key, msg):
        if key not in self.warned:
            self.warned.add(key)
            self.log(f"warning: {msg}")

    def files(self, name: str) -> list[Path]:
        subs = ("RGB", "Modal") + (("Label",) if self.cfg.label_topic else ())
        return [self.out / s / f"{name}.png" for s in subs]

    def run_bag(self, path: Path, name: str, report: BagReport) -> None:
        cfg = self.cfg
        report.storage = _storage_of(path)
        reader = open_bag(path)
        try:
            topics = [cfg.rgb_topic, cfg.x_topic] + ([cfg.label_topic] if cfg.label_topic else [])
            conns = {}
            for index, topic in enumerate(topics):
                info = reader.topics.get(topic)
                if info is None:
                    raise BagError(f"{path}: topic {topic!r} not found; the bag has: {topic_summary(reader)}")
                if info.msgtype not in IMAGE_TYPES:
                    raise BagError(f"{path}: topic {topic!r} carries {info.msgtype}, not sensor_msgs/Image or "
                                   f"CompressedImage")
                for c in reader.connections:
                    if c.topic == topic:
                        conns[c.id] = index
            total = sum(reader.topics[t].msgcount or 0 for t in topics)
            report.messages = {t: 0 for t in topics}
            sync = ApproximateTimeSync(len(topics), cfg.queue_size, cfg.slop)
            state = {"index": 0, "last_kept": None}
            from tqdm import tqdm

            bar = tqdm(total=total, desc=name, unit="msg", disable=not cfg.progress, leave=False, dynamic_ncols=True)
            read = 0
            selected = [c for c in reader.connections if c.id in conns]
            messages = iter(reader.messages(connections=selected))
            try:
                while True:
                    try:
                        conn, logtime, raw = next(messages)
                    except StopIteration:
                        break
                    except Exception as e:  # whatever the storage layer (apsw, mcap, zstd) raises on damage
                        raise BagError(f"{path}: bag is damaged: reading failed after {read} of {total} messages "
                                       f"({type(e).__name__}: {e}); frames extracted before this point are "
                                       "kept") from e
                    read += 1
                    bar.update(1)
                    index = conns[conn.id]
                    topic = topics[index]
                    report.messages[topic] += 1
                    if cfg.stamp == "header":
                        stamp = cdr_header_stamp_ns(raw)
                        if stamp == 0:
                            raise BagError(f"{path}: topic {topic!r} has messages with a zero header stamp; "
                                           "re-run with --stamp bag to pair by receive time")
                    else:
                        stamp = int(logtime)
                    match = sync.add(index, stamp, (bytes(raw), conn.msgtype))
                    if match is not None:
                        self.handle_match(match, topics, name, report, state)
            finally:
                bar.close()
                st = sync.stats()
                report.dropped = {t: st.dropped[i] + st.queued[i] for i, t in enumerate(topics)}
        finally:
            try:
                reader.close()
            except Exception:  # closing a damaged bag may fail too; the first error is the one to report
                pass

    def handle_match(self, match, topics, bag: str, report: BagReport, state: dict) -> None:
        cfg = self.cfg
        report.pairs += 1
        k = state["index"]
        state["index"] += 1
        rgb_stamp = match.stamps[0]
        if k % cfg.every != 0 or (state["last_kept"] is not None and
                                  rgb_stamp - state["last_kept"] < cfg.min_interval * NS):
            report.subsampled += 1
            return
        state["last_kept"] = rgb_stamp
        name = f"{bag}_{rgb_stamp:019d}"
        entry = {
            "name": name, "bag": bag, "rgb_stamp_ns": rgb_stamp, "x_stamp_ns": match.stamps[1],
            "label_stamp_ns": match.stamps[2] if cfg.label_topic else None,
            "sync_offset_ns": match.stamps[1] - rgb_stamp,
        }
        report.offsets_ns.append(abs(entry["sync_offset_ns"]))
        if all(p.is_file() for p in self.files(name)):
            old = self.old_frames.get(name)
            if old is None or (old.get("x_stamp_ns"), old.get("label_stamp_ns")) == (entry["x_stamp_ns"],
                                                                                    entry["label_stamp_ns"]):
                report.skipped += 1
                self.frames[name] = {**(old or {}), **entry}
                return
            report.rewritten += 1
        try:
            extra, files = self.prepare_frame(name, match, topics)
        except ImageDecodeError as e:
            report.decode_errors += 1
            self.warn_once(("decode", str(e)[:60]), f"{bag}: frame at {rgb_stamp} skipped: {e}")
            return
        entry.update(extra)
        futures = [self.pool.submit(write_png, path, arr) for path, arr in files]
        self.pending.append((name, entry, futures, report))
        while len(self.pending) > self.max_pending:
            self._complete_oldest()

    def decode(self, payload, topic: str):
        raw, msgtype = payload
        try:
            msg = self.typestore.deserialize_cdr(raw, msgtype)
        except Exception as e:  # a damaged message body: lose this frame, not the bag
            raise ImageDecodeError(f"topic {topic}: cannot deserialise {msgtype} ({type(e).__name__}: {e})") from None
        try:
            return decode_message(msg), getattr(msg, "encoding", None) or getattr(msg, "format", "")
        except ImageDecodeError as e:
            raise ImageDecodeError(f"topic {topic}: {e}") from None

    def prepare_frame(self, name: str, match, topics) -> tuple[dict, list]:
        """Decode and convert one synchronized set; returns (manifest fields, [(png path, array), ...])."""
        cfg = self.cfg
        rgb, rgb_enc = self.decode(match.msgs[0], topics[0])
        if rgb.ndim == 2:  # a grey camera on the RGB topic: replicate the channel
            self.warn_once("grey-rgb", f"{topics[0]} is single-channel ({rgb_enc}); writing it as grey RGB")
            rgb = np.repeat((rgb >> 8).astype(np.uint8)[..., None] if rgb.dtype == np.uint16
                            else rgb[..., None], 3, axis=2)
        x, x_enc = self.decode(match.msgs[1], topics[1])
        modality = cfg.modality
        if modality == "auto":
            modality = "depth" if (x.dtype == np.float32 or x_enc.startswith("16UC1")) else "thermal"
        if self.modality is None:
            self.modality = modality
        if x.dtype == np.float32:
            x = depth_to_mm(x, cfg.depth_scale)
        h, w = rgb.shape[:2]
        x_size = [int(x.shape[1]), int(x.shape[0])]
        if x.shape[:2] != (h, w):
            self.warn_once("x-size", f"{topics[1]} is {x_size[0]}x{x_size[1]}, {topics[0]} is {w}x{h}: "
                                     f"X is resized to the RGB size")
            x = _resize(x, (w, h), nearest=(modality == "depth"))
        label = None
        if cfg.label_topic:
            label, _ = self.decode(match.msgs[2], topics[2])
            if label.ndim != 2:
                raise ImageDecodeError(f"topic {topics[2]}: labels must be single-channel (mono8/16UC1)")
            if label.dtype != np.uint8:
                if label.max() > 255:
                    raise ImageDecodeError(f"topic {topics[2]}: label value {int(label.max())} > 255 does not "
                                           "fit the 8-bit Label/ PNGs")
                label = label.astype(np.uint8)
            if label.shape != (h, w):
                label = _resize(label, (w, h), nearest=True)
        files = [(self.out / "RGB" / f"{name}.png", rgb), (self.out / "Modal" / f"{name}.png", x)]
        if label is not None:
            files.append((self.out / "Label" / f"{name}.png", label))
        return ({"rgb_encoding": rgb_enc, "x_encoding": x_enc, "size": [w, h], "x_size": x_size,
                 "x_dtype": str(x.dtype)}, files)

    def finish(self, reports: list, processed_ok: set) -> tuple[list, int, int]:
        """Merge with the old manifest, split, write lists + manifest. Returns (frames, n_train, n_test)."""
        cfg = self.cfg
        frames = dict(self.frames)
        for name, old in self.old_frames.items():
            # frames of bags not (fully) processed this time stay listed as long as their files exist
            if name not in frames and old.get("bag") not in processed_ok and all(p.is_file()
                                                                                 for p in self.files(name)):
                frames[name] = old
        for name, f in frames.items():
            key = name
            if cfg.split_block > 0:
                key = f"{f['bag']}#{int(f['rgb_stamp_ns'] // int(cfg.split_block * NS))}"
            f["split"] = split_of(key, cfg.seed, cfg.test_fraction)
        ordered = [frames[n] for n in sorted(frames)]
        # a test split that should exist but came out empty by chance gets the frame with the smallest hash
        if cfg.test_fraction > 0 and len(ordered) >= 2 and not any(f["split"] == "test" for f in ordered):
            pick = min(ordered, key=lambda f: hashlib.sha256(f"{cfg.seed}:{f['name']}".encode()).digest())
            pick["split"] = "test"
        train = [f["name"] for f in ordered if f["split"] == "train"]
        test = [f["name"] for f in ordered if f["split"] == "test"]
        _atomic_write_text(self.out / "train.txt", "".join(n + "\n" for n in train))
        _atomic_write_text(self.out / "test.txt", "".join(n + "\n" for n in test))
        return ordered, len(train), len(test)


def _storage_of(path: Path) -> str | None:
    if not path.exists():
        return None
    files = [path] if path.is_file() else list(path.iterdir())
    for f in files:
        if f.suffix == ".mcap":
            return "mcap"
        if f.suffix == ".db3":
            return "sqlite3"
    return "unknown"


def extract(bags, out_dir, cfg: ExtractConfig, log: Callable[[str], None] = print) -> ExtractSummary:
    """Extract every bag in ``bags`` into ``out_dir`` (see the module docstring). Never raises for a bad bag:
    its BagReport has status "error" and the reason; raises ValueError for bad arguments."""
    import sigma_ros

    cfg.validate()
    bags = [Path(b) for b in bags]
    if not bags:
        raise ValueError("no bags given")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    old = _load_manifest(out, cfg)
    ex = _Extractor(out, cfg, old, log)

    reports, seen = [], {}
    for path in bags:
        name = bag_name(path)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}_{seen[name]}"
        reports.append(BagReport(path=str(path), name=name))
    processed_ok: set = set()
    summary = ExtractSummary(out_dir=out, bags=reports)
    try:
        for report in reports:
            try:
                try:
                    ex.run_bag(Path(report.path), report.name, report)
                finally:
                    ex.drain()  # this bag's frames are on disk before the next bag starts
                report.status = "ok"
                processed_ok.add(report.name)
            except BagError as e:
                report.status, report.error = "error", str(e)
                log(f"error: {e}")
    finally:
        # Always leave lists and a manifest that describe the frames on disk, even after Ctrl-C.
        try:
            ex.close()
        except BaseException:  # noqa: B036 - already propagating the first error; frames that failed stay unlisted
            pass
        frames, n_train, n_test = ex.finish(reports, processed_ok)
        summary.total_frames, summary.train, summary.test = len(frames), n_train, n_test
        bag_docs = dict(old.get("bags", {}))
        for r in reports:
            bag_docs[r.name] = {
                "path": str(Path(r.path).resolve()), "storage": r.storage, "status": r.status, "error": r.error,
                "messages": r.messages, "pairs": r.pairs, "written": r.written, "skipped": r.skipped,
                "subsampled": r.subsampled, "decode_errors": r.decode_errors, "dropped": r.dropped,
            }
        mean, mx = summary.offsets_ms()
        manifest = {
            "format": MANIFEST_FORMAT,
            "tool": "sigma-ros extract",
            "sigma_ros_version": sigma_ros.__version__,
            "updated_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "topics": {"rgb": cfg.rgb_topic, "x": cfg.x_topic, "label": cfg.label_topic},
            "modality": ex.modality,
            "x_storage": ("16-bit PNG of the raw values (mono16/16UC1); 32FC1 depth as uint16 = round(metres * "
                          f"{cfg.depth_scale:g}), 0 = invalid; 8-bit PNG for mono8; RGB PNG for colour X"),
            "options": {"slop": cfg.slop, "queue_size": cfg.queue_size, "every": cfg.every,
                        "min_interval": cfg.min_interval, "test_fraction": cfg.test_fraction, "seed": cfg.seed,
                        "split_block": cfg.split_block, "stamp": cfg.stamp, "modality": cfg.modality,
                        "depth_scale": cfg.depth_scale},
            "bags": bag_docs,
            "counts": {"frames": len(frames), "train": n_train, "test": n_test},
            "sync_offset_ms": {"mean": mean, "max": mx},
            "frames": frames,
        }
        _atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return summary

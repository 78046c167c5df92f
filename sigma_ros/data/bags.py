"""rosbag2 helpers on the ``rosbags`` library (no ROS installation needed): open bags with clear errors, read
header stamps cheaply, build rosbags messages, and write bags of synthetic RGB-thermal scenes for tests and demos.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BagError", "IMAGE_TYPES", "get_typestore", "open_bag", "bag_name", "topic_summary", "cdr_header_stamp_ns",
    "rosbags_header", "write_synthetic_bag", "thermal_to_mono16",
]

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class BagError(RuntimeError):
    """A bag that cannot be read as asked; the message names the bag (and topic) and says why."""


def get_typestore(distro: str = "jazzy"):
    """The rosbags type store for a ROS 2 distro (sensor_msgs/Image is the same in Humble and Jazzy)."""
    from rosbags.typesys import Stores, get_typestore as _get

    stores = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
    if distro not in stores:
        raise ValueError(f"unknown ROS distro {distro!r}; choose {', '.join(stores)}")
    return _get(stores[distro])


def bag_name(path: str | Path) -> str:
    """A short, file-name-safe name for a bag: its directory name, or the file stem of a bare .mcap/.db3."""
    p = Path(path)
    name = p.name if p.is_dir() or not p.suffix else p.stem
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return safe or "bag"


def open_bag(path: str | Path):
    """Open a rosbag2 bag (directory with metadata.yaml, or a bare .mcap / .db3 file) with rosbags' Reader."""
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    p = Path(path)
    if not p.exists():
        raise BagError(f"{p}: no such bag (file or directory)")
    try:
        reader = Reader(p)
        reader.open()
    except Exception as e:  # ReaderError, apsw/sqlite, mcap, yaml...: all mean "this bag cannot be read"
        kind = "directory" if p.is_dir() else "file"
        hint = ""
        if isinstance(e, ReaderError) or "malformed" in str(e) or "magic" in str(e):
            hint = ("; the bag looks truncated or damaged (a recording cut off?): `mcap recover` can rebuild "
                    "an MCAP file, `ros2 bag reindex` a bag directory's metadata")
        raise BagError(f"{p}: cannot open bag {kind} ({type(e).__name__}: {e}){hint}") from e
    return reader


def topic_summary(reader) -> str:
    items = sorted(reader.topics.items())
    if not items:
        return "no topics"
    return ", ".join(f"{t} ({info.msgtype}, {info.msgcount} msgs)" for t, info in items)


def cdr_header_stamp_ns(raw: bytes | memoryview) -> int:
    """``header.stamp`` of a CDR-serialised message whose first field is a std_msgs/Header (Image,
    CompressedImage...), without deserialising the image payload."""
    if len(raw) < 12:
        raise ValueError(f"message of {len(raw)} bytes is too short for a CDR header")
    little = raw[1] == 1  # encapsulation: 0x0001 = CDR little-endian, 0x0000 = big-endian
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


def rosbags_header(typestore, stamp_ns: int, frame_id: str = ""):
    """A rosbags std_msgs/Header for ``stamp_ns`` (what numpy_to_image needs for rosbags message classes)."""
    header_t = typestore.types["std_msgs/msg/Header"]
    time_t = typestore.types["builtin_interfaces/msg/Time"]
    return header_t(stamp=time_t(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)),
                    frame_id=frame_id)


def thermal_to_mono16(x8: np.ndarray) -> np.ndarray:
    """8-bit synthetic thermal -> 16-bit counts spanning the full range (x * 257, so x16 >> 8 == x8)."""
    return x8.astype(np.uint16) * np.uint16(257)


def write_synthetic_bag(path: str | Path, n_frames: int = 20, fps: float = 10.0, storage: str = "mcap", *,
                        x_fps: float | None = None, height: int = 96, width: int = 128, seed: int = 0,
                        rgb_topic: str = "/camera/color/image_raw", x_topic: str = "/camera/thermal/image_raw",
                        label_topic: str | None = None, label_every: int = 1, thermal_encoding: str = "mono16",
                        rgb_encoding: str = "rgb8", jitter: float = 0.002, x_offset: float = 0.0,
                        rgb_latency: float = 0.005, x_latency: float = 0.03, night: bool | None = None,
                        start_ns: int = 1_700_000_000_000_000_000, distro: str = "jazzy",
                        extra_topic: bool = True, rgb_format: str = "raw", x_scale: int = 1) -> dict[str, Any]:
    """Write a rosbag2 bag of synthetic street scenes: an RGB camera at ``fps``, a thermal camera at ``x_fps``
    (default: same), optional mono8 labels on ``label_topic`` for every ``label_every``-th RGB frame.

    Stamps get Gaussian ``jitter`` (s); thermal stamps are shifted by ``x_offset``; each message is logged
    (bag receive time) ``*_latency`` seconds after its stamp, so arrival order differs from stamp order as on a
    robot. The world changes once per RGB frame: a thermal frame shows the scene of the RGB frame nearest in time.
    ``thermal_encoding``: mono16 (x * 257), 16UC1, mono8 or 32FC1 (then "depth" = x / 25.5 metres, with NaN holes).
    ``rgb_format``: "raw" (sensor_msgs/Image) or "png" / "jpeg" (sensor_msgs/CompressedImage, as image_transport's
    compressed plugin publishes). ``x_scale``: thermal at 1/x_scale of the RGB resolution (nearest), as thermal
    cameras usually are. ``storage``: "mcap" or "sqlite3". Returns what was written (stamps, scene seeds) for tests.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from sigma_ros.data.synthetic import make_scene, scene_seed
    from sigma_ros.image_codec import numpy_to_image

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be one of {', '.join(plugins)}, got {storage!r}")
    if rgb_format not in ("raw", "png", "jpeg"):
        raise ValueError(f"rgb_format must be raw, png or jpeg, got {rgb_format!r}")
    ts = get_typestore(distro)
    image_t = ts.types["sensor_msgs/msg/Image"]
    compressed_t = ts.types["sensor_msgs/msg/CompressedImage"]
    rgb_t = image_t if rgb_format == "raw" else compressed_t

    def rgb_message(rgb, hdr):
        if rgb_format == "raw":
            return numpy_to_image(rgb, rgb_encoding, header=hdr, msg_type=image_t)
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=rgb_format.upper(), **({"quality": 95} if rgb_format == "jpeg" else {}))
        return compressed_t(header=hdr, format=f"rgb8; {rgb_format} compressed bgr8",
                            data=np.frombuffer(buf.getvalue(), np.uint8).copy())
    rng = np.random.default_rng(seed)
    x_fps = fps if x_fps is None else x_fps
    duration = n_frames / fps
    n_x = max(int(round(duration * x_fps)), 1)

    def stamps(n, rate, offset):
        t = start_ns + (np.arange(n) / rate + offset) * 1e9 + rng.normal(0, jitter * 1e9, n)
        return [int(v) for v in t]

    rgb_stamps = stamps(n_frames, fps, 0.0)
    x_stamps = stamps(n_x, x_fps, x_offset)
    seeds = [scene_seed(seed, k) for k in range(n_frames)]
    nights = [bool(np.random.default_rng(s ^ 0x5EED).random() < 0.5) if night is None else bool(night)
              for s in seeds]
    scenes: dict[int, dict] = {}

    def scene(k):
        if k not in scenes:
            scenes[k] = make_scene(seeds[k], height, width, night=nights[k])
        return scenes[k]

    records = []  # (log time, topic, message)
    for k, st in enumerate(rgb_stamps):
        sc = scene(k)
        hdr = rosbags_header(ts, st, "camera_color_optical_frame")
        records.append((st + int(rgb_latency * 1e9), rgb_topic, rgb_message(sc["rgb"], hdr)))
        if label_topic and k % label_every == 0:
            hdr = rosbags_header(ts, st, "camera_color_optical_frame")
            records.append((st + int(rgb_latency * 1e9) + 1000, label_topic,
                            numpy_to_image(sc["label"], "mono8", header=hdr, msg_type=image_t)))
    x_scene = []
    for j, st in enumerate(x_stamps):
        k = int(np.clip(np.round((st - start_ns) / 1e9 * fps), 0, n_frames - 1))
        x_scene.append(k)
        x8 = scene(k)["x"][::x_scale, ::x_scale]
        if thermal_encoding in ("mono16", "16UC1"):
            x = thermal_to_mono16(x8)
        elif thermal_encoding == "32FC1":
            x = (x8.astype(np.float32) / 25.5).astype(np.float32)
            x[::7, ::5] = np.nan
        else:
            x = x8
        hdr = rosbags_header(ts, st, "camera_thermal_optical_frame")
        records.append((st + int(x_latency * 1e9), x_topic,
                        numpy_to_image(x, thermal_encoding, header=hdr, msg_type=image_t)))
    records.sort(key=lambda r: r[0])

    path = Path(path)
    with Writer(path, version=9, storage_plugin=plugins[storage]) as writer:
        conns = {}
        topics = [rgb_topic, x_topic] + ([label_topic] if label_topic else [])
        for topic in topics:
            msgtype = (rgb_t if topic == rgb_topic else image_t).__msgtype__
            conns[topic] = (writer.add_connection(topic, msgtype, typestore=ts), msgtype)
        if extra_topic:  # something else a real bag would carry, so tools must pick their topics
            string_t = ts.types["std_msgs/msg/String"]
            conn = writer.add_connection("/rosout_text", string_t.__msgtype__, typestore=ts)
            writer.write(conn, start_ns, ts.serialize_cdr(string_t(data="synthetic bag"), string_t.__msgtype__))
        for logtime, topic, msg in records:
            conn, msgtype = conns[topic]
            writer.write(conn, logtime, ts.serialize_cdr(msg, msgtype))
    return {
        "path": path, "storage": storage, "height": height, "width": width,
        "rgb_topic": rgb_topic, "x_topic": x_topic, "label_topic": label_topic,
        "rgb_stamps": rgb_stamps, "x_stamps": x_stamps,
        "label_stamps": [st for k, st in enumerate(rgb_stamps) if label_topic and k % label_every == 0],
        "scene_seeds": seeds, "nights": nights, "x_scene": x_scene, "thermal_encoding": thermal_encoding,
    }

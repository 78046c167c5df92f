"""sensor_msgs/Image <-> numpy, without cv_bridge and without ROS.

Why our own: cv_bridge has no ROS 2 build installable here, the PyPI clone maps 16UC1 to 8-bit and uses numpy APIs
that numpy 2 removed, and cv_bridge's compiled numpy ABI breaks inside torch virtualenvs. The conversion is a few
lines of numpy, so we own it and test it against real rclpy and rosbags messages.

Everything is duck-typed on the message fields ``height, width, encoding, step, is_bigendian, data`` (and
``header.stamp.sec/nanosec``), so the same code decodes rclpy ``sensor_msgs.msg.Image`` objects (``data`` is an
``array.array``) and rosbags ``sensor_msgs__msg__Image`` objects (``data`` is a numpy array).

Decoded layout (what the rest of sigma_ros expects):

* colour encodings (rgb8, bgr8, rgba8, bgra8, 8UC3) -> (H, W, 3) uint8 in **RGB** order (bgr/bgra swapped, alpha
  dropped). 8UC3 carries no channel order; like OpenCV (and cv_bridge's ``passthrough`` publishers) we take it as BGR.
* mono8 / 8UC1 -> (H, W) uint8; mono16 / 16UC1 -> (H, W) uint16; 32FC1 -> (H, W) float32 (depth in metres; NaN/inf
  are kept and mean "invalid").
* multi-byte data is converted to native byte order; row padding (``step`` > width * bytes per pixel) is removed.
* the result never aliases the message buffer (safe to keep after the message is gone or reused).
"""
from __future__ import annotations

import array
import dataclasses
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ENCODINGS",
    "DECODABLE_ENCODINGS",
    "ENCODABLE_ENCODINGS",
    "EncodingInfo",
    "ImageDecodeError",
    "ImageEncodeError",
    "image_to_numpy",
    "compressed_to_numpy",
    "decode_message",
    "image_fields",
    "numpy_to_image",
    "stamp_to_ns",
    "header_stamp_ns",
]


class EncodingInfo(NamedTuple):
    dtype: str  # numpy base dtype (byte order applied from is_bigendian)
    channels: int  # channels stored in the message
    order: str  # "rgb", "bgr", "rgba", "bgra" or "mono": how the stored channels are ordered


ENCODINGS: dict[str, EncodingInfo] = {
    "rgb8": EncodingInfo("u1", 3, "rgb"),
    "bgr8": EncodingInfo("u1", 3, "bgr"),
    "rgba8": EncodingInfo("u1", 4, "rgba"),
    "bgra8": EncodingInfo("u1", 4, "bgra"),
    "8UC3": EncodingInfo("u1", 3, "bgr"),  # no order in the encoding: OpenCV convention (BGR)
    "mono8": EncodingInfo("u1", 1, "mono"),
    "8UC1": EncodingInfo("u1", 1, "mono"),
    "mono16": EncodingInfo("u2", 1, "mono"),
    "16UC1": EncodingInfo("u2", 1, "mono"),
    "32FC1": EncodingInfo("f4", 1, "mono"),
}
DECODABLE_ENCODINGS = tuple(ENCODINGS)
ENCODABLE_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1", "rgb8", "bgr8", "32FC1")


class ImageDecodeError(ValueError):
    """A message that cannot be turned into an array (the message says which field is wrong)."""


class ImageEncodeError(ValueError):
    """An array that does not fit the requested encoding."""


def image_to_numpy(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/Image-like message (see the module docstring for the output layout).

    Raises ImageDecodeError for an unsupported encoding, a zero width/height, a step smaller than one row of pixels,
    or a data buffer shorter than step * height.
    """
    encoding = str(msg.encoding)
    info = ENCODINGS.get(encoding)
    if info is None:
        raise ImageDecodeError(
            f"unsupported encoding {encoding!r} (supported: {', '.join(DECODABLE_ENCODINGS)})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image: {width}x{height} (width x height), encoding {encoding}")
    itemsize = np.dtype(info.dtype).itemsize
    row_bytes = width * info.channels * itemsize
    if step < row_bytes:
        raise ImageDecodeError(
            f"step {step} is smaller than one row of pixels ({width} px * {info.channels * itemsize} bytes = "
            f"{row_bytes}) for encoding {encoding}")
    buf = _data_bytes(msg.data)
    needed = step * height
    if buf.size < needed:
        raise ImageDecodeError(
            f"data has {buf.size} bytes, expected step * height = {step} * {height} = {needed} ({encoding} "
            f"{width}x{height})")

    big = bool(msg.is_bigendian) and itemsize > 1
    dtype = np.dtype(info.dtype).newbyteorder(">" if big else "<")
    if step == row_bytes:
        rows = buf[:needed]
    else:  # drop the per-row padding; one copy into a contiguous buffer
        rows = np.ascontiguousarray(buf[:needed].reshape(height, step)[:, :row_bytes])
    arr = rows.view(dtype).reshape(height, width, info.channels)
    if info.order == "mono":
        out = arr[:, :, 0]
    elif info.order == "rgb":
        out = arr
    elif info.order == "bgr":
        out = arr[:, :, ::-1]
    elif info.order == "rgba":
        out = arr[:, :, :3]
    else:  # bgra
        out = arr[:, :, 2::-1]
    # One copy: native byte order, C-contiguous, never aliasing the message buffer.
    return np.array(out, dtype=dtype.newbyteorder("="), order="C")


def compressed_to_numpy(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (``format``, ``data``) with Pillow, to the same layout as
    image_to_numpy: JPEG/PNG colour -> (H,W,3) RGB uint8, grey -> (H,W) uint8, 16-bit PNG -> (H,W) uint16.

    image_transport's ``compressedDepth`` is handled too: a 12-byte header (format, depthQuantA, depthQuantB) then
    a PNG; 16UC1 comes back as uint16, 32FC1 as float32 metres (inverse-depth quantisation undone, 0 -> NaN).
    """
    import io

    from PIL import Image, UnidentifiedImageError

    fmt = str(getattr(msg, "format", ""))
    raw = _data_bytes(msg.data).tobytes()
    depth = "compresseddepth" in fmt.lower()
    if depth:
        if len(raw) < 12:
            raise ImageDecodeError(f"compressedDepth message of {len(raw)} bytes has no 12-byte header")
        quant_a, quant_b = np.frombuffer(raw[4:12], dtype="<f4")
        raw = raw[12:]
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16L", "I;16B", "I"):
                arr = np.asarray(im).astype(np.uint16)
            elif mode == "L":
                arr = np.array(im)
            else:
                arr = np.array(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ImageDecodeError(f"cannot decode compressed image (format {fmt!r}): {e}") from None
    if arr.size == 0:
        raise ImageDecodeError(f"compressed image (format {fmt!r}) is empty")
    if depth and fmt.split(";")[0].strip() == "32FC1":
        inv = arr.astype(np.float32)
        with np.errstate(divide="ignore"):
            out = np.float32(quant_a) / (inv - np.float32(quant_b))
        out[arr == 0] = np.nan
        return out.astype(np.float32)
    return arr


def decode_message(msg: Any) -> np.ndarray:
    """Image or CompressedImage (told apart by the ``format`` field) -> numpy, see image_to_numpy."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_numpy(msg)
    return image_to_numpy(msg)


def _data_bytes(data: Any) -> np.ndarray:
    """The message payload as a flat uint8 array, without copying when the buffer protocol allows it."""
    if data is None:
        raise ImageDecodeError("message has no data")
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)  # array.array (rclpy), bytes, memoryview
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)  # plain lists


def image_fields(array_: np.ndarray, encoding: str) -> dict:
    """The sensor_msgs/Image fields (all but ``header``) for ``array_`` in ``encoding``.

    ``data`` is a contiguous 1-D uint8 numpy array (little-endian payload, ``is_bigendian`` = 0). Accepted inputs:
    mono8/8UC1: (H,W) uint8; mono16/16UC1: (H,W) uint16; 32FC1: (H,W) float32 (float64 is cast);
    rgb8/bgr8: (H,W,3) uint8 given in **RGB** order (bgr8 swaps to BGR for you). (H,W,1) is accepted for mono.
    """
    a = np.asarray(array_)
    if encoding not in ENCODABLE_ENCODINGS:
        raise ImageEncodeError(f"cannot encode {encoding!r} (supported: {', '.join(ENCODABLE_ENCODINGS)})")
    info = ENCODINGS[encoding]
    if a.ndim == 3 and a.shape[2] == 1 and info.channels == 1:
        a = a[:, :, 0]
    want_ndim = 2 if info.channels == 1 else 3
    if a.ndim != want_ndim or (want_ndim == 3 and a.shape[2] != info.channels):
        shape = "(H, W)" if info.channels == 1 else f"(H, W, {info.channels})"
        raise ImageEncodeError(f"{encoding} needs an array of shape {shape}, got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageEncodeError(f"cannot encode an empty image of shape {a.shape}")
    want = np.dtype(info.dtype)
    if info.dtype == "f4" and a.dtype.kind == "f":
        a = a.astype("<f4", copy=False)
    elif a.dtype.kind != want.kind or a.dtype.itemsize != want.itemsize:
        raise ImageEncodeError(f"{encoding} needs a {want.name} array, got {a.dtype.name}")
    if info.order == "bgr":
        a = a[:, :, ::-1]
    a = np.ascontiguousarray(a, dtype=want.newbyteorder("<"))
    height, width = a.shape[:2]
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(width * info.channels * want.itemsize),
        "data": a.reshape(-1).view(np.uint8),
    }


def _is_rosbags_type(msg_type: type) -> bool:
    # rosbags message classes are dataclasses carrying __msgtype__; rclpy classes are neither.
    return dataclasses.is_dataclass(msg_type) and hasattr(msg_type, "__msgtype__")


def numpy_to_image(array_: np.ndarray, encoding: str, header: Any = None, msg_type: type | None = None) -> Any:
    """Build an Image message of class ``msg_type`` (default: rclpy's ``sensor_msgs.msg.Image``).

    Works for rclpy classes (``data`` becomes an ``array.array('B')``, a single memcpy) and rosbags classes
    (``data`` stays a numpy uint8 array; ``header`` is required there because rosbags dataclasses have no
    defaults: build one with ``sigma_ros.data.bags.rosbags_header``). ``header`` is used as given (not copied).
    """
    fields = image_fields(array_, encoding)
    if msg_type is None:
        from sensor_msgs.msg import Image as msg_type  # noqa: N813 - lazy: keep this module ROS-free
    if _is_rosbags_type(msg_type):
        if header is None:
            raise TypeError("numpy_to_image: a header is required for rosbags message classes")
        return msg_type(header=header, **fields)
    data = array.array("B")
    data.frombytes(fields.pop("data"))  # buffer protocol: one copy, no per-element Python checks
    msg = msg_type(**fields)
    msg.data = data  # assigned after construction: the constructor would re-check every element
    if header is not None:
        msg.header = header
    return msg


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time-like (``sec``, ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header_stamp_ns(msg: Any) -> int:
    """``msg.header.stamp`` in integer nanoseconds (raises AttributeError when the message has no header)."""
    return stamp_to_ns(msg.header.stamp)


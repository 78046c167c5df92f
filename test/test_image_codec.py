"""sigma_ros.image_codec against real rclpy sensor_msgs/Image messages and rosbags message classes."""
from __future__ import annotations

import array

import numpy as np
import pytest

from sigma_ros.image_codec import (
    DECODABLE_ENCODINGS,
    ImageDecodeError,
    ImageEncodeError,
    header_stamp_ns,
    image_fields,
    image_to_numpy,
    numpy_to_image,
)

sensor_msgs = pytest.importorskip("sensor_msgs.msg")
from rosbags.typesys import Stores, get_typestore  # noqa: E402

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
RB_IMAGE = TYPESTORE.types["sensor_msgs/msg/Image"]
RB_HEADER = TYPESTORE.types["std_msgs/msg/Header"]
RB_TIME = TYPESTORE.types["builtin_interfaces/msg/Time"]


def rb_header(stamp_ns=0, frame_id="cam"):
    return RB_HEADER(stamp=RB_TIME(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


def make_rclpy(height, width, encoding, step, payload: bytes, is_bigendian=0):
    msg = sensor_msgs.Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=is_bigendian)
    msg.data = array.array("B", payload)
    return msg


def make_rosbags(height, width, encoding, step, payload: bytes, is_bigendian=0):
    return RB_IMAGE(header=rb_header(), height=height, width=width, encoding=encoding, is_bigendian=is_bigendian,
                    step=step, data=np.frombuffer(payload, dtype=np.uint8).copy())


MAKERS = {"rclpy": make_rclpy, "rosbags": make_rosbags}


def pad_rows(raw: np.ndarray, height: int, pad: int) -> bytes:
    """Rows of ``raw`` (bytes per row = raw.size // height) followed by ``pad`` garbage bytes each."""
    rows = raw.reshape(height, -1).view(np.uint8).reshape(height, -1)
    garbage = np.full((height, pad), 0xAB, np.uint8)
    return np.concatenate([rows, garbage], axis=1).tobytes()


RNG = np.random.default_rng(0)
H, W = 5, 7
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
MONO8 = RNG.integers(0, 256, (H, W), dtype=np.uint8)
MONO16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
DEPTH = RNG.uniform(0.2, 8.0, (H, W)).astype(np.float32)
DEPTH[0, 0], DEPTH[1, 1], DEPTH[2, 2] = np.nan, np.inf, -np.inf

# encoding -> (stored array in the message's own channel order, expected decoded array)
CASES = {
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[:, :, ::-1], RGB),
    "8UC3": (RGB[:, :, ::-1], RGB),
    "rgba8": (np.concatenate([RGB, ALPHA], axis=2), RGB),
    "bgra8": (np.concatenate([RGB[:, :, ::-1], ALPHA], axis=2), RGB),
    "mono8": (MONO8, MONO8),
    "8UC1": (MONO8, MONO8),
    "mono16": (MONO16, MONO16),
    "16UC1": (MONO16, MONO16),
    "32FC1": (DEPTH, DEPTH),
}


def test_cases_cover_every_supported_encoding():
    assert set(CASES) == set(DECODABLE_ENCODINGS)


@pytest.mark.parametrize("maker", sorted(MAKERS))
@pytest.mark.parametrize("encoding", sorted(CASES))
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("bigendian", [0, 1])
def test_decode_hand_built_messages(maker, encoding, pad, bigendian):
    stored, expected = CASES[encoding]
    order = ">" if bigendian else "<"
    raw = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder(order))
    row_bytes = raw.nbytes // H
    payload = pad_rows(raw, H, pad)
    msg = MAKERS[maker](H, W, encoding, row_bytes + pad, payload, is_bigendian=bigendian)
    out = image_to_numpy(msg)
    assert out.shape == expected.shape
    assert out.dtype == expected.dtype and out.dtype.isnative
    assert out.flags["C_CONTIGUOUS"] and out.flags["WRITEABLE"]
    np.testing.assert_array_equal(out, expected)  # NaN == NaN and inf kept for 32FC1


def test_big_endian_16uc1_is_swapped_to_native():
    values = np.array([[0x0102, 0xFF00, 0x00FF]], dtype=np.uint16)
    msg = make_rclpy(1, 3, "16UC1", 6, values.astype(">u2").tobytes(), is_bigendian=1)
    out = image_to_numpy(msg)
    assert out.tolist() == [[0x0102, 0xFF00, 0x00FF]]
    # The same bytes read as little-endian give the swapped values: is_bigendian really matters.
    msg.is_bigendian = 0
    assert image_to_numpy(msg).tolist() == [[0x0201, 0x00FF, 0xFF00]]


def test_32fc1_keeps_nan_and_inf():
    out = image_to_numpy(make_rclpy(H, W, "32FC1", W * 4, DEPTH.tobytes()))
    assert np.isnan(out[0, 0]) and np.isposinf(out[1, 1]) and np.isneginf(out[2, 2])
    assert np.isfinite(out).sum() == H * W - 3


def test_decoded_array_does_not_alias_the_message():
    msg = make_rclpy(H, W, "mono8", W, MONO8.tobytes())
    out = image_to_numpy(msg)
    msg.data[0] = (int(msg.data[0]) + 1) % 256
    assert out[0, 0] == MONO8[0, 0]
    out[0, 0] = 0  # writable
    rb = make_rosbags(H, W, "rgb8", W * 3, RGB.tobytes())
    out = image_to_numpy(rb)
    rb.data[:] = 0
    np.testing.assert_array_equal(out, RGB)


def test_data_longer_than_step_times_height_is_accepted():
    msg = make_rclpy(H, W, "mono8", W, MONO8.tobytes() + b"\x00" * 9)
    np.testing.assert_array_equal(image_to_numpy(msg), MONO8)


# ---- malformed messages: each gets its own specific message -------------------------------------------------

@pytest.mark.parametrize("maker", sorted(MAKERS))
@pytest.mark.parametrize("encoding", ["yuv422", "bayer_rggb8", "", "RGB8", "16UC3"])
def test_unsupported_encoding(maker, encoding):
    msg = MAKERS[maker](2, 2, encoding, 6, bytes(12))
    with pytest.raises(ImageDecodeError, match="unsupported encoding") as e:
        image_to_numpy(msg)
    assert repr(encoding) in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("maker", sorted(MAKERS))
@pytest.mark.parametrize("height,width", [(0, 4), (4, 0), (0, 0)])
def test_zero_size(maker, height, width):
    msg = MAKERS[maker](height, width, "mono8", width, bytes(max(height * width, 1)))
    with pytest.raises(ImageDecodeError, match="empty image"):
        image_to_numpy(msg)


@pytest.mark.parametrize("maker", sorted(MAKERS))
@pytest.mark.parametrize("encoding,step", [("rgb8", 20), ("mono16", 13), ("32FC1", 27), ("bgra8", 27)])
def test_step_too_small(maker, encoding, step):
    msg = MAKERS[maker](H, W, encoding, step, bytes(step * H))
    with pytest.raises(ImageDecodeError, match=f"step {step} is smaller than one row"):
        image_to_numpy(msg)


@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_data_too_short(maker):
    msg = MAKERS[maker](H, W, "mono16", W * 2, bytes(W * 2 * H - 1))
    with pytest.raises(ImageDecodeError, match=rf"data has {W * 2 * H - 1} bytes, expected .* = {W * 2 * H}"):
        image_to_numpy(msg)
    msg = MAKERS[maker](H, W, "rgb8", W * 3 + 4, bytes(0))
    with pytest.raises(ImageDecodeError, match="data has 0 bytes"):
        image_to_numpy(msg)


# ---- encoding ---------------------------------------------------------------------------------------------

ROUND_TRIP = {
    "mono8": MONO8, "8UC1": MONO8, "mono16": MONO16, "16UC1": MONO16, "rgb8": RGB, "bgr8": RGB, "32FC1": DEPTH,
}


@pytest.mark.parametrize("encoding", sorted(ROUND_TRIP))
def test_round_trip_rclpy_through_real_serialization(encoding):
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header
    from builtin_interfaces.msg import Time

    arr = ROUND_TRIP[encoding]
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id="thermal_optical")
    msg = numpy_to_image(arr, encoding, header=header)
    assert isinstance(msg, sensor_msgs.Image)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (H, W, encoding, 0)
    assert msg.step * msg.height == len(msg.data)
    back = deserialize_message(serialize_message(msg), sensor_msgs.Image)
    assert back.header.frame_id == "thermal_optical" and header_stamp_ns(back) == 12 * 10**9 + 345
    np.testing.assert_array_equal(image_to_numpy(back), arr)


@pytest.mark.parametrize("encoding", sorted(ROUND_TRIP))
def test_round_trip_rosbags_through_cdr(encoding):
    arr = ROUND_TRIP[encoding]
    msg = numpy_to_image(arr, encoding, header=rb_header(7 * 10**9 + 1, "rgb"), msg_type=RB_IMAGE)
    assert isinstance(msg, RB_IMAGE)
    raw = TYPESTORE.serialize_cdr(msg, RB_IMAGE.__msgtype__)
    back = TYPESTORE.deserialize_cdr(raw, RB_IMAGE.__msgtype__)
    assert header_stamp_ns(back) == 7 * 10**9 + 1
    np.testing.assert_array_equal(image_to_numpy(back), arr)


def test_bgr8_is_stored_in_bgr_order():
    msg = numpy_to_image(RGB, "bgr8")
    stored = np.frombuffer(msg.data, np.uint8).reshape(H, W, 3)
    np.testing.assert_array_equal(stored, RGB[:, :, ::-1])


def test_encoded_16bit_payload_is_little_endian_even_from_big_endian_input():
    f = image_fields(MONO16.astype(">u2"), "mono16")
    assert f["is_bigendian"] == 0
    np.testing.assert_array_equal(f["data"].view("<u2").reshape(H, W), MONO16)


def test_float64_depth_is_cast_and_mono_accepts_trailing_channel():
    f = image_fields(DEPTH.astype(np.float64), "32FC1")
    assert f["step"] == W * 4
    np.testing.assert_array_equal(f["data"].view("<f4").reshape(H, W), DEPTH)
    assert image_fields(MONO8[:, :, None], "mono8")["step"] == W


@pytest.mark.parametrize("arr,encoding,pattern", [
    (MONO8.astype(np.int64), "mono8", "needs a uint8 array, got int64"),
    (MONO8, "mono16", "needs a uint16 array, got uint8"),
    (RGB, "mono8", r"needs an array of shape \(H, W\)"),
    (MONO8, "rgb8", r"needs an array of shape \(H, W, 3\)"),
    (np.zeros((0, 4), np.uint8), "mono8", "empty image"),
    (MONO8, "yuv422", "cannot encode 'yuv422'"),
    (MONO16.astype(np.int16), "16UC1", "needs a uint16 array, got int16"),
])
def test_encode_errors(arr, encoding, pattern):
    with pytest.raises(ImageEncodeError, match=pattern):
        image_fields(arr, encoding)


def test_rosbags_class_requires_a_header():
    with pytest.raises(TypeError, match="header is required"):
        numpy_to_image(MONO8, "mono8", msg_type=RB_IMAGE)


def test_default_header_for_rclpy_and_padding_free_step():
    msg = numpy_to_image(MONO16, "16UC1")
    assert msg.header.frame_id == "" and header_stamp_ns(msg) == 0
    assert msg.step == W * 2


# ---- CompressedImage (what most recorded bags carry) -----------------------------------------------------

def _png_bytes(arr) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _compressed(fmt: str, payload: bytes, kind="rclpy"):
    if kind == "rclpy":
        msg = sensor_msgs.CompressedImage(format=fmt)
        msg.data = array.array("B", payload)
        return msg
    ctype = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
    return ctype(header=rb_header(), format=fmt, data=np.frombuffer(payload, np.uint8).copy())


@pytest.mark.parametrize("kind", ["rclpy", "rosbags"])
@pytest.mark.parametrize("arr,fmt", [(RGB, "rgb8; png compressed bgr8"), (MONO8, "mono8; png compressed mono8"),
                                     (MONO16, "mono16; png compressed mono16")])
def test_compressed_png_is_lossless(kind, arr, fmt):
    from sigma_ros.image_codec import decode_message

    out = decode_message(_compressed(fmt, _png_bytes(arr), kind))
    assert out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)


def test_compressed_jpeg_keeps_rgb_order():
    import io

    from PIL import Image

    from sigma_ros.image_codec import compressed_to_numpy

    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 200  # pure-ish red: a channel swap would make it blue
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    out = compressed_to_numpy(_compressed("rgb8; jpeg compressed bgr8", buf.getvalue()))
    assert out.shape == (32, 32, 3)
    assert abs(int(out[..., 0].mean()) - 200) < 6 and out[..., 2].mean() < 6


def test_compressed_depth_16uc1_and_32fc1():
    import struct

    from sigma_ros.image_codec import decode_message

    mm = MONO16 % 5000
    msg = _compressed("16UC1; compressedDepth png", struct.pack("<iff", 0, 0.0, 0.0) + _png_bytes(mm))
    np.testing.assert_array_equal(decode_message(msg), mm)
    # 32FC1: image_transport stores inverse depth quantised as A / d + B in 16 bits, 0 = invalid, with
    # A = q * (q + 1), B = 1 - A / depth_max (its defaults: q = 100, depth_max = 10 m)
    quant_a = 100.0 * 101.0
    quant_b = 1.0 - quant_a / 10.0
    depth = np.array([[0.5, 1.0, 2.0], [4.0, 8.0, np.nan]], np.float32)
    inv = np.where(np.isfinite(depth), np.round(quant_a / depth + quant_b), 0).astype(np.uint16)
    msg = _compressed("32FC1; compressedDepth png", struct.pack("<iff", 0, quant_a, quant_b) + _png_bytes(inv))
    out = decode_message(msg)
    assert out.dtype == np.float32 and np.isnan(out[1, 2])
    np.testing.assert_allclose(out[np.isfinite(depth)], depth[np.isfinite(depth)], rtol=0.005)


def test_compressed_garbage_raises():
    from sigma_ros.image_codec import compressed_to_numpy

    with pytest.raises(ImageDecodeError, match="cannot decode compressed image"):
        compressed_to_numpy(_compressed("jpeg", b"not an image at all"))
    with pytest.raises(ImageDecodeError, match="no 12-byte header"):
        compressed_to_numpy(_compressed("16UC1; compressedDepth", b"\x00" * 5))

"""The node's health report for ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, one status, 1 Hz).

:func:`assess` is ROS-free (level + one-line summary from the counters), :func:`to_message` builds the message.
Key names are stable (monitoring tools and the tests read them); latencies are milliseconds, rates Hz.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


@dataclass
class Snapshot:
    """What the node measured; filled by the node once per report."""

    rgb_rate: float = 0.0
    x_rate: float = 0.0
    pair_rate: float = 0.0
    output_rate: float = 0.0
    rgb_received: int = 0
    x_received: int = 0
    pairs: int = 0
    pairs_dropped: int = 0  # newer pair replaced one the worker had not started (bounded latency)
    unpaired_dropped: int = 0  # messages the synchronizer discarded without a partner
    decode_errors: int = 0
    inference_errors: int = 0
    outputs: int = 0
    published: Dict[str, int] = field(default_factory=dict)  # per output topic (label, color, overlay, confidence)
    seconds_since_input: float = math.inf
    seconds_since_pair: float = math.inf
    recent_decode_errors: int = 0  # since the previous report
    recent_inference_errors: int = 0
    last_error: str = ""
    sync_offset_ms: Dict[str, float] = field(default_factory=dict)  # p50/p95/max
    inference_ms: Dict[str, float] = field(default_factory=dict)
    end_to_end_ms: Dict[str, float] = field(default_factory=dict)
    node_latency_ms: Dict[str, float] = field(default_factory=dict)
    static: Dict[str, str] = field(default_factory=dict)  # device, model, checkpoint, ...


def _ms(stats: Dict[str, float], key: str) -> str:
    v = stats.get(key, math.nan)
    return "nan" if v is None or math.isnan(v) else f"{v:.1f}"


def assess(s: Snapshot, stale_after: float = 5.0) -> Tuple[int, str]:
    """(level, summary) for the snapshot."""
    if s.recent_inference_errors:
        return ERROR, f"inference failing ({s.recent_inference_errors} errors since last report): {s.last_error}"
    if s.seconds_since_input > stale_after:
        return WARN, "no input images"
    if s.seconds_since_pair > stale_after:
        return WARN, "images arrive but none pair up: check that both topics publish and sync.slop vs. their stamps"
    if s.recent_decode_errors:
        return WARN, f"dropping malformed images ({s.recent_decode_errors} since last report): {s.last_error}"
    return OK, (f"{s.output_rate:.1f} Hz out, inference p50 {_ms(s.inference_ms, 'p50')} ms, "
                f"end-to-end p95 {_ms(s.end_to_end_ms, 'p95')} ms")


def key_values(s: Snapshot) -> List[Tuple[str, str]]:
    kv: List[Tuple[str, str]] = [
        ("rgb_rate_hz", f"{s.rgb_rate:.2f}"),
        ("x_rate_hz", f"{s.x_rate:.2f}"),
        ("pair_rate_hz", f"{s.pair_rate:.2f}"),
        ("output_rate_hz", f"{s.output_rate:.2f}"),
        ("rgb_received", str(s.rgb_received)),
        ("x_received", str(s.x_received)),
        ("pairs", str(s.pairs)),
        ("pairs_dropped", str(s.pairs_dropped)),
        ("unpaired_dropped", str(s.unpaired_dropped)),
        ("decode_errors", str(s.decode_errors)),
        ("inference_errors", str(s.inference_errors)),
        ("outputs_published", str(s.outputs)),
    ]
    kv.extend((f"published_{name}", str(n)) for name, n in sorted(s.published.items()))
    for prefix, stats in (("sync_offset_ms", s.sync_offset_ms), ("inference_latency_ms", s.inference_ms),
                          ("end_to_end_latency_ms", s.end_to_end_ms), ("node_latency_ms", s.node_latency_ms)):
        for q in ("p50", "p95", "max"):
            kv.append((f"{prefix}_{q}", _ms(stats, q)))
    kv.extend(s.static.items())
    return kv


def to_message(s: Snapshot, *, name: str, hardware_id: str, stamp: Any) -> Any:
    """diagnostic_msgs/DiagnosticArray with one DiagnosticStatus for this node."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    level, message = assess(s)
    status = DiagnosticStatus(level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in key_values(s)])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array

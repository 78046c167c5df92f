"""Argument parsing shared by the inference tools."""
from __future__ import annotations


def parse_range(text: str | None) -> tuple[float, float] | None:
    """'MIN,MAX' -> (min, max); empty -> None (use what the checkpoint records)."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"expected MIN,MAX such as 0.5,8, got {text!r}") from None
    return lo, hi

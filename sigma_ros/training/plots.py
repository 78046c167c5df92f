"""Loss and mIoU curves of a run as one PNG (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_curves(history: list[dict], path: str | Path) -> Path | None:
    rows = [r for r in history if r.get("loss") not in (None, "")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([r["loss"] for r in rows], dtype=float)
    ev = [r for r in history if r.get("mIoU") not in (None, "")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, loss, lw=1, alpha=0.5, label="loss")
    if len(loss) > 4:  # a short moving average makes the trend readable
        k = max(2, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax1.plot(steps[k - 1:], smooth, lw=2, label=f"mean of {k}")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (CE)")
    ax1.set_yscale("log" if loss.min() > 0 and loss.max() / max(loss.min(), 1e-12) > 20 else "linear")
    ax1.grid(alpha=0.3)
    ax1.legend()
    if ev:
        ax2.plot([r["step"] for r in ev], [100 * float(r["mIoU"]) for r in ev], "o-", label="mIoU")
        ax2.plot([r["step"] for r in ev], [100 * float(r["pixel_acc"]) for r in ev], "s--", alpha=0.6,
                 label="pixel accuracy")
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "no evaluation split", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("step")
    ax2.set_ylabel("%")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path

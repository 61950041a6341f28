"""PNG plots of a pretext build: each raw statistic's histogram with its threshold, label counts."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd



def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


def plot_histograms(table: pd.DataFrame, thresholds: Mapping[str, float | None], out_dir: str | Path) -> list[Path]:
    """One PNG per raw statistic with data: its distribution over windows and the threshold line.

    Variances are heavy-tailed (head motion), so a statistic spanning more than two decades is
    drawn on a log10 axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for stat, threshold in thresholds.items():
        values = pd.to_numeric(table[stat], errors="coerce").dropna().to_numpy(dtype=np.float64)
        if values.size == 0 or threshold is None:
            continue
        positive = values[values > 0]
        log = positive.size == values.size and positive.size > 1 and positive.max() / positive.min() > 100
        fig, ax = plt.subplots(figsize=(6, 3.5))
        shown = np.log10(values) if log else values
        ax.hist(shown, bins=min(50, max(5, values.size // 4)), color="#4c72b0")
        line = np.log10(threshold) if log and threshold > 0 else threshold
        ax.axvline(line, color="#c44e52", linestyle="--", label=f"threshold {threshold:.4g}")
        above = int((values > threshold).sum())
        ax.set_title(f"{stat}: {values.size} windows, {above} above threshold")
        ax.set_xlabel(f"log10 {stat}" if log else stat)
        ax.set_ylabel("windows")
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, Path(out_dir) / f"hist_{stat}.png"))
        plt.close(fig)
    return written


def plot_class_counts(counts: Mapping[str, Mapping[str, int]], out_dir: str | Path) -> list[Path]:
    """One PNG with a bar chart of each label's class counts (missing shown as its own bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, c in counts.items() if sum(v for k, v in c.items() if k != "missing") > 0]
    if not names:
        return []
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        classes = list(counts[name])
        ax.bar(classes, [counts[name][c] for c in classes], color=["#8c8c8c" if c == "missing" else "#55a868" for c in classes])
        ax.set_title(name)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    path = _save(fig, Path(out_dir) / "label_counts.png")
    plt.close(fig)
    return [path]

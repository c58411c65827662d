"""The PNG: step time against model size, one line per system, one panel per worker count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _series(result: Row, workers: int) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """label -> [(model MB, timing)] for every system measured with `workers` workers."""
    lines: dict[str, list[tuple[float, dict[str, float]]]] = {}

    def add(label: str, mb: float, timing: dict[str, float]) -> None:
        lines.setdefault(label, []).append((mb, timing))

    for row in result["ours"]["sync"]:
        if row["workers"] == workers and row["cap"] == "unlimited":
            shards = "" if row["shards"] == 1 else f", {row['shards']} shards"
            add(f"ours {row['codec']}{shards}", row["model_mb"], row["step_s"])
    for row in result["peers"]:
        if row["workers"] == workers:
            add(row["system"], row["model_mb"], row["step_s"])
    for row in result["floor"]:
        if row["workers"] == workers:
            add(f"floor: {row['system']} round", row["model_mb"], row["round_s"])
    return {label: sorted(points, key=lambda p: p[0]) for label, points in lines.items()}


def write_plot(result: Row, path: Path) -> str | None:
    """Write the plot; returns why not when matplotlib is missing (it is a dev extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[dev]'): no plot"
    counts = sorted({r["workers"] for r in result["ours"]["sync"]})
    fig, axes = plt.subplots(1, len(counts), figsize=(6 * len(counts), 5), squeeze=False)
    for ax, workers in zip(axes[0], counts):
        for label, points in _series(result, workers).items():
            sizes = [mb for mb, _ in points]
            median = [1e3 * t["median"] for _, t in points]
            low = [m - 1e3 * t["min"] for m, (_, t) in zip(median, points)]
            high = [1e3 * t["max"] - m for m, (_, t) in zip(median, points)]
            style = "--" if label.startswith("floor") else "-"
            ax.errorbar(sizes, median, yerr=[low, high], fmt=style + "o", capsize=3,
                        label=label, markersize=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes_mb = sorted({r["model_mb"] for r in
                           result["ours"]["sync"] + result["peers"] + result["floor"]})
        ax.set_xticks(sizes_mb, [f"{mb:g}" for mb in sizes_mb])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("model size (MB float32)")
        ax.set_ylabel("sync step time (ms), median, min-max bars")
        ax.set_title(f"{workers} worker(s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    machine = result["machine"]
    fig.suptitle(f"paramserver bench ({result['plan']}): {machine['cpu_count']} cores, grpcio "
                 f"{machine['grpcio']}, loopback TCP, {machine['chunk_bytes'] >> 10} KiB chunks")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None

"""The plot of `python -m benchmarks.hosts` reports: sync step time per link rate, one
panel per worker count, one line per system; a `--plan full` report, or several (the rows
of all of them: e.g. `--plan rpc` at each `--rate`).

    python -m benchmarks.hosts_plot benchmarks/results/hosts-full-DATE.json OUT.png
    python -m benchmarks.hosts_plot REPORT [REPORT ...] OUT.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RATES = ("100mbit", "1gbit", "10gbit")


def label(row: dict[str, Any]) -> str:
    if row["system"] == "gloo":
        return "gloo all-reduce"
    if row["system"] == "rpc":
        return "torch.distributed.rpc PS, 1 server host"
    return f"ours {row['codec']}, {row['server_hosts']} server host(s)"


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "error" not in r]
    counts = sorted({r["workers"] for r in rows})
    figure, axes = plt.subplots(1, len(counts), figsize=(6 * len(counts), 4.5), squeeze=False)
    for axis, workers in zip(axes[0], counts):
        lines: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            if row["workers"] == workers and row["rate"] in RATES:
                # per MB of model, so 100 Mbit/s (a smaller model) sits on the same scale
                per_mb = 1e3 * row["step_s"] / row["model_mb"]
                lines.setdefault(label(row), []).append((RATES.index(row["rate"]), per_mb))
        for name, points in sorted(lines.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        axis.set_xticks(range(len(RATES)), [r.replace("bit", " bit/s") for r in RATES])
        axis.set_yscale("log")
        axis.set_title(f"W={workers}, every host on its own link")
        axis.set_ylabel("sync step, ms per MB of model")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    *reports, target = sys.argv[1:]
    plot({"rows": [row for path in reports for row in json.loads(Path(path).read_text())["rows"]]},
         Path(target))
    print(f"wrote {target}")

"""The digits job per codec (issue #4): accuracy, bytes pushed, compression, step time.

Each row is one `paramserver launch --servers 1 --workers 2 --mode sync --epochs 10` run.

    python -m benchmarks.codec_digits [--report FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness

ROWS: list[tuple[str, list[str]]] = [
    ("none", ["--codec", "none"]),
    ("fp16", ["--codec", "fp16"]),
    ("qsgd:bits=8", ["--codec", "qsgd:bits=8"]),
    ("qsgd:bits=4", ["--codec", "qsgd:bits=4"]),
    ("qsgd:bits=2", ["--codec", "qsgd:bits=2"]),
    ("topk:ratio=0.01, EF", ["--codec", "topk:ratio=0.01"]),
    ("topk:ratio=0.01, no EF", ["--codec", "topk:ratio=0.01", "--no-error-feedback"]),
    ("topk:ratio=0.01, EF + momentum correction",
     ["--codec", "topk:ratio=0.01", "--ef-momentum", "0.9", "--momentum", "0"]),
    ("topk:ratio=0.01,mode=approx, EF + momentum correction",
     ["--codec", "topk:ratio=0.01,mode=approx", "--ef-momentum", "0.9", "--momentum", "0"]),
    ("randomk:ratio=0.05", ["--codec", "randomk:ratio=0.05"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/codec_digits-*.json)")
    args = parser.parse_args()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-codec-digits-"))
    results = []
    print("| codec | accuracy | bytes pushed | compression | step time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for index, (label, extra) in enumerate(ROWS):
        report = workdir / f"{index}.json"
        subprocess.run([*harness.CLI, "launch", "--servers", "1", "--workers", "2", "--mode", "sync",
                        "--epochs", "10", "--no-progress", "--report", str(report), *extra],
                       check=True, capture_output=True, timeout=600)
        summary = json.loads(report.read_text())
        step_ms = 1e3 * sum(summary["worker_step_s"]) / len(summary["worker_step_s"])
        results.append({"label": label, **summary, "step_ms": step_ms})
        print(f"| {label} | {summary['accuracy']:.4f} | {summary['bytes_pushed'] / 1e6:.2f} MB "
              f"| x{summary['compression_ratio']:.1f} | {step_ms:.1f} ms |", flush=True)
    harness.write_report(harness.report_path("codec_digits", args.report), results)
    accuracy = [r["accuracy"] for r in results]
    print(f"{len(results)} codec settings: accuracy {min(accuracy):.4f}-{max(accuracy):.4f}, "
          f"compression up to x{max(r['compression_ratio'] for r in results):.1f}  "
          f"[{time.monotonic() - started:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

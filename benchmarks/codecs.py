"""Codec benchmarks (issue #4): codec speed, step time per codec, and bandwidth caps.

1. Encode and decode of a 25M-element float32 tensor per codec (CPU; CUDA too if present).
2. Sync step time (push, aggregate, apply, pull) of a MODEL_MB model per codec, 1 worker,
   against a real `paramserver serve` process on loopback.
3. The same step under bandwidth caps (a token bucket on the worker's link, both
   directions), and each codec's break-even bandwidth: below it, the codec's fewer bytes
   win over its encode/decode time.

    python -m benchmarks.codecs [--quick] [--report FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import google.protobuf
import grpc
import torch

from benchmarks import harness
from benchmarks.blob import Blob
from benchmarks.measure import stat
from benchmarks.shaping import capped_links
from paramserver.cli.local_cluster import LocalCluster
from paramserver.codecs import make_codec
from paramserver.transport import DEFAULT_CHUNK_BYTES, parse_bandwidth
from paramserver.types import CodecSpec
from workers import ParameterClient

CODECS = ["none", "fp16", "bf16", "qsgd:bits=8", "qsgd:bits=4", "qsgd:bits=2",
          "topk:ratio=0.01", "topk:ratio=0.01,mode=exact", "randomk:ratio=0.01"]
STEP_CODECS = ["none", "fp16", "qsgd:bits=8", "qsgd:bits=4", "topk:ratio=0.01",
               "topk:ratio=0.01,mode=exact"]
SPEED_NUMEL = 25_000_000
MODEL_MB = 100
CAP_MODEL_MB = 16
REPS = 3


def codec_speed(device: str, numel: int, reps: int) -> list[dict[str, object]]:
    """Encode/decode seconds per codec on one tensor of `numel` float32 values."""
    x = torch.randn(numel, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for spec in CODECS:
        codec = make_codec(spec)
        payload = codec.encode(x)  # warm-up
        codec.decode(payload, numel, x.dtype)
        encode, decode, encode_cpu, decode_cpu = [], [], [], []
        for _ in range(reps):
            sync()
            t0, c0 = time.perf_counter(), time.thread_time()
            payload = codec.encode(x)
            sync()
            t1, c1 = time.perf_counter(), time.thread_time()
            codec.decode(payload, numel, x.dtype)
            sync()
            encode.append(t1 - t0)
            decode.append(time.perf_counter() - t1)
            encode_cpu.append(c1 - c0)
            decode_cpu.append(time.thread_time() - c1)
        # Wall time on a loaded machine waits for the core; this thread's CPU time does not
        # (both are printed; a GPU's work is not in the CPU time).
        row = {"codec": str(codec.spec), "device": device,
               "encode_s": stat(encode), "decode_s": stat(decode),
               "encode_cpu_s": stat(encode_cpu), "decode_cpu_s": stat(decode_cpu),
               "encode_gbps": x.nbytes / statistics.median(encode) / 1e9,
               "decode_gbps": x.nbytes / max(statistics.median(decode), 1e-9) / 1e9,
               "encode_cpu_gbps": x.nbytes / max(statistics.median(encode_cpu), 1e-9) / 1e9,
               "decode_cpu_gbps": x.nbytes / max(statistics.median(decode_cpu), 1e-9) / 1e9,
               "ratio": x.nbytes / payload.numel()}
        rows.append(row)
        print(f"  {device:<4} {codec.spec!s:<30} encode {statistics.median(encode)*1e3:7.1f} ms"
              f" ({row['encode_gbps']:5.2f} GB/s; cpu {row['encode_cpu_gbps']:5.2f})  decode "
              f"{statistics.median(decode)*1e3:7.1f} ms ({row['decode_gbps']:5.2f} GB/s; cpu "
              f"{row['decode_cpu_gbps']:5.2f})  x{row['ratio']:.1f}", flush=True)
    return rows


def step_times(address: str, model_mb: float, codec: str, bandwidth: float | None,
               reps: int) -> tuple[dict[str, float], int, int]:
    """Seconds per sync step, and bytes sent up and down per step."""
    model = Blob(model_mb)
    client = ParameterClient(address, f"bench-{time.monotonic_ns()}",
                             push_codecs=[CodecSpec.parse(codec)], timeout_s=600,
                             shaper_factory=capped_links(bandwidth))
    try:
        client.attach(model)
        model.set_gradients()  # attach pulled the parameters; the gradients stay fixed
        client.step()  # warm-up
        up0, down0 = client.gradient_bytes_pushed, client.bytes_pulled
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            client.step()
            samples.append(time.perf_counter() - t0)
        up = (client.gradient_bytes_pushed - up0) // reps
        down = (client.bytes_pulled - down0) // reps
        return stat(samples), up, down
    finally:
        client.close()


def run_steps(cluster: LocalCluster, model_mb: float, caps: list[str], codecs: list[str],
              reps: int, server_index: int) -> list[dict[str, Any]]:
    rows = []
    for codec in codecs:
        for cap in caps:
            # A fresh server per (codec, cap): sync, one worker, plain SGD.
            (server, address), = cluster.start_servers(1, [
                "--mode", "sync", "--workers", "1", "--lr", "0.001", "--momentum", "0"],
                first_index=server_index)
            server_index += 1
            times, up, down = step_times(address, model_mb, codec, parse_bandwidth(cap), reps)
            cluster.stop(server)
            rows.append({"codec": codec, "cap": cap, "model_mb": model_mb, "step_s": times,
                         "bytes_up": up, "bytes_down": down})
            print(f"  {model_mb:>5.0f} MB  {codec:<30} {cap:>9}  step "
                  f"{times['median']*1e3:9.1f} ms  (min {times['min']*1e3:.1f}, max "
                  f"{times['max']*1e3:.1f})  up {up/1e6:8.2f} MB  down {down/1e6:8.2f} MB",
                  flush=True)
    return rows


def break_even(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Bandwidth below which each codec's step beats `none`, from the unlimited-link times:
    t(B) = t_unlimited + bytes / B, solved for t_codec(B) = t_none(B)."""
    unlimited = {r["codec"]: r for r in rows if r["cap"] == "unlimited"}
    none = unlimited["none"]
    out = {}
    for codec, row in unlimited.items():
        if codec == "none":
            continue
        saved = (none["bytes_up"] + none["bytes_down"]) - (row["bytes_up"] + row["bytes_down"])
        cost = row["step_s"]["median"] - none["step_s"]["median"]
        if saved <= 0:
            out[codec] = "never (sends no fewer bytes)"
        elif cost <= 0:
            out[codec] = "always (faster even on loopback)"
        else:
            out[codec] = f"{saved * 8 / cost / 1e9:.2f} Gbit/s"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one cap, 1 rep")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the encode/decode speed of each codec (no servers)")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/codecs-*.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the worker; the server process gets the other core
    numel = 1_000_000 if args.quick else SPEED_NUMEL
    reps = 1 if args.quick else REPS
    print(f"codec speed on {numel:,} float32 ({numel * 4 / 1e6:.0f} MB), median of {reps}:")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    speed = [row for device in devices for row in codec_speed(device, numel, reps)]
    if args.speed_only:
        harness.write_report(harness.report_path("codecs-speed", args.report),
                             {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                                          "load_average": os.getloadavg()},
                              "codec_speed": speed})
        return 0
    with LocalCluster(Path(tempfile.mkdtemp(prefix="bench-codecs-"))) as cluster:
        print(f"sync step, 1 worker, per codec (pull: none), median of {reps}:")
        big = run_steps(cluster, 4 if args.quick else MODEL_MB, ["unlimited"],
                        STEP_CODECS[:2] if args.quick else STEP_CODECS, reps, 0)
        caps = run_steps(cluster, 2 if args.quick else CAP_MODEL_MB,
                         list(harness.CAPS[-1:] if args.quick else harness.CAPS),
                         STEP_CODECS[:2] if args.quick else STEP_CODECS, reps, 100)
    even = break_even(caps if any(r["cap"] == "unlimited" for r in caps) else big)
    report = {
        "machine": {"cpus": os.cpu_count(), "grpcio": grpc.__version__,
                    "protobuf": google.protobuf.__version__, "torch": torch.__version__,
                    "chunk_bytes": DEFAULT_CHUNK_BYTES, "transport": "grpc, loopback tcp",
                    "cap": "token bucket on the worker, each direction"},
        "codec_speed": speed, "step_100mb": big, "step_caps": caps, "break_even": even,
    }
    harness.write_report(harness.report_path("codecs", args.report), report)
    print("break-even bandwidth (below it the codec's step beats none): "
          + "; ".join(f"{codec} {value}" for codec, value in even.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

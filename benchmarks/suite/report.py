"""The terminal tables of a run (the JSON holds every figure; this is the readable part)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]
Log = Callable[[str], None]
NOISY_CORES = 0.1  # other processes' CPU per second of the step, above which a row is noisy


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], log: Log) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    log("  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in cells:
        log("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))


def ms(timing: dict[str, float] | None) -> str:
    if timing is None:
        return "-"
    return f"{1e3 * timing['median']:.1f} ({1e3 * timing['min']:.1f}-{1e3 * timing['max']:.1f})"


def _cpu_cells(row: Row) -> list[str]:
    return [f"{1e3 * row.get('server_cpu_s', 0.0):.0f}", f"{1e3 * row['worker_cpu_s']:.0f}",
            f"{1e3 * row.get('other_cpu_s', 0.0):.0f}", f"{100 * row.get('busy_share', 0.0):.0f}%"]


CPU_HEADERS = ["srv cpu ms", "wrk cpu ms", "other ms", "busy"]


def print_report(result: Row, log: Log = print) -> None:
    m = result["machine"]
    log(f"\nparamserver bench ({result['plan']}): {m['cpu_model']}, {m['cpu_count']} cores, "
        f"{m['memory_gib']:.0f} GiB; grpcio {m['grpcio']}, protobuf {m['protobuf']}, torch "
        f"{m['torch']}; transport {m['transport']}, {m['chunk_bytes'] >> 10} KiB chunks; "
        f"{result['warmup']} warm-up + {result['reps']} timed per figure: median (min-max)")
    log("CPU columns are per step: servers, workers (all), other processes; busy = share of "
        "all cores used by servers + workers.")

    log("\nFloor: the model up and back down, no server logic")
    table(["system", "MB", "W", "round ms", "GB/s", *CPU_HEADERS],
          [[r["system"], f"{r['model_mb']:g}", r["workers"], ms(r["round_s"]),
            f"{r['gbps']:.2f}", *_cpu_cells(r)] for r in result["floor"]], log)

    log("\nOurs, sync step (push, aggregate, SGD momentum 0.9, pull), unlimited loopback")
    table(["MB", "W", "S", "codec", "step ms", "MB up", "MB down", *CPU_HEADERS, "mem x"],
          [[f"{r['model_mb']:g}", r["workers"], r["shards"], r["codec"], ms(r["step_s"]),
            f"{r['bytes_up'] / 1e6:.1f}", f"{r['bytes_down'] / 1e6:.1f}", *_cpu_cells(r),
            f"{max(r['memory']['peak_over_idle_x_model']):.2f}"]
           for r in result["ours"]["sync"]], log)
    log("  mem x = server peak RSS above idle so far / model bytes held (worst shard), read "
        "after each row: a group's first codec (none) is its own, later ones include it; "
        f"budget {result['ours']['sync'][0]['memory']['budget_x_model']}")

    log("\nOurs, async: pushes per second over all workers (each push followed by a pull)")
    table(["MB", "W", "pushes/s", *CPU_HEADERS], [
        [f"{r['model_mb']:g}", r["workers"], "{median:.1f} ({min:.1f}-{max:.1f})".format(
            **r["pushes_per_s"]), *_cpu_cells(r)] for r in result["ours"]["async"]], log)

    log("\nPeers, sync step (same gradients, same SGD momentum 0.9)")
    table(["system", "MB", "W", "step ms", *CPU_HEADERS],
          [[r["system"], f"{r['model_mb']:g}", r["workers"], ms(r["step_s"]), *_cpu_cells(r)]
           for r in result["peers"]], log)

    _side_by_side(result, log)
    _caps(result["caps"], log)
    _convergence(result["convergence"], log)
    soak = result["soak"]
    log(f"\nSoak: {soak['pushes']} async pushes of {soak['model_mb']:g} MB, W={soak['workers']}: "
        f"server RSS {soak['rss_settled'] / 2**20:.1f} -> {soak['rss_end'] / 2**20:.1f} MiB "
        f"after the first 10% ({soak['growth_bytes'] / 2**20:+.2f} MiB, "
        f"{soak['slope_bytes_per_push']:+.0f} B/push); peak above idle "
        f"{(soak['peak_rss'][0] - soak['idle_rss'][0]) / 2**20:.0f} MiB")
    _targets(result["targets"], log)
    noisy = [r for r in result["ours"]["sync"] + result["peers"]
             if r.get("other_cpu_s", 0.0) > NOISY_CORES * r["step_s"]["median"]]
    if noisy:
        log(f"\nWARNING: other processes used more than {NOISY_CORES} cores during {len(noisy)} "
            "rows (the `other` column): another job was running; those figures are not clean")
    log(f"\n[{result['wall_s']:.0f} s]")


def _side_by_side(result: Row, log: Log) -> None:
    sync, peers, floor = result["ours"]["sync"], result["peers"], result["floor"]
    systems: list[tuple[str, Callable[[Row], bool]]] = [
        ("ours none", lambda r: r.get("system") == "ours" and r["codec"] == "none"
         and r["shards"] == 1),
        ("ours topk", lambda r: r.get("system") == "ours" and r["codec"] == "topk:ratio=0.01"),
        ("gloo", lambda r: r.get("system") == "gloo-allreduce"),
        ("rpc-ps", lambda r: r.get("system") == "rpc-ps"),
        ("bare gRPC", lambda r: r.get("system") == "grpc-stream"),
        ("raw TCP", lambda r: r.get("system") == "tcp"),
    ]
    log("\nSide by side: median step (round) ms")
    rows = []
    for workers in sorted({r["workers"] for r in sync}):
        for mb in sorted({r["model_mb"] for r in sync}):
            cells = []
            for _, match in systems:
                row = next((r for r in sync + peers + floor if match(r)
                            and r["workers"] == workers and r["model_mb"] == mb), None)
                timing = None if row is None else row.get("step_s", row.get("round_s"))
                cells.append("-" if timing is None else f"{1e3 * timing['median']:.1f}")
            rows.append([f"{mb:g}", workers, *cells])
    table(["MB", "W", *(name for name, _ in systems)], rows, log)


def _caps(caps: Row, log: Log) -> None:
    log(f"\nLink caps ({caps['method']}): {caps['model_mb']:g} MB, W={caps['workers']}, "
        "sync step ms; wire = bytes on lo per step at the lowest cap")
    for row in caps["calibration"]:
        log(f"  calibration {row['cap']:>9}: raw TCP delivers {row['delivered_gbit_s']:.3f} "
            "Gbit/s (up + down together)")
    keys = sorted({(r["system"], r["codec"]) for r in caps["rows"]},
                  key=lambda k: (k[0] != "ours", k))
    rows = []
    for system, codec in keys:
        by_cap = {r["cap"]: r for r in caps["rows"] if (r["system"], r["codec"]) == (system, codec)}
        last = by_cap.get(caps["caps"][-1])
        rows.append([system, codec, *(ms(by_cap[c]["step_s"]) if c in by_cap else "-"
                                      for c in caps["caps"]),
                     "-" if last is None else f"{last['wire_bytes'] / 1e6:.1f}"])
    table(["system", "codec", *caps["caps"], "wire MB"], rows, log)


def _convergence(conv: Row, log: Log) -> None:
    log(f"\nTime to {conv['target_accuracy']:.2f} test accuracy (digits MLP, W={conv['workers']}, "
        f"worker {conv['slow_rank']} slowed {conv['slow_factor']}x, {1e3 * conv['compute_s']:.0f} ms "
        "emulated compute per step)")
    if conv.get("note"):
        log(f"  {conv['note']}")
    table(["mode", "time s", "reached", "best acc"], [
        [r["mode"], "-" if r["time_to_target_s"] is None else
         "{median:.2f} ({min:.2f}-{max:.2f})".format(**r["time_to_target_s"]),
         f"{r['reached']}/{len(r['runs'])}", f"{max(x['best_accuracy'] for x in r['runs']):.3f}"]
        for r in conv["rows"]], log)


def _targets(checks: list[Row], log: Log) -> None:
    log("\nTargets (issue #7)")
    for check in checks:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[check["met"]]
        value = "-" if check["value"] is None else f"{check['value']:.3f}"
        extra = ""
        if check["evidence"].get("without_fixed_x_model") is not None:
            extra = (f"; without the fixed {check['evidence']['fixed_overhead_bytes'] / 2**20:.0f}"
                     f" MiB: {check['evidence']['without_fixed_x_model']:.2f}")
        log(f"  {verdict:<6} {check['target']}: {value} (goal {check['goal']}{extra})")

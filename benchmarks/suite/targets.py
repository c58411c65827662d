"""The targets of issue #7, checked on the figures of one run (ratios from the same run).

Each check reports its value, the goal, met or not, and the evidence that explains a miss:
where the CPU went per step (servers, workers, everything else) for both sides of the
ratio. On 2 cores a busy share near 100% means the comparison is CPU time, not the wire.
"""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]


def _find(rows: list[Row], **match: Any) -> Row | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _cpu(row: Row) -> dict[str, float]:
    return {k: row[k] for k in ("server_cpu_s", "worker_cpu_s", "other_cpu_s", "busy_share")
            if k in row}


def _check(name: str, goal: str, value: float | None, met: bool | None,
           evidence: dict[str, Any]) -> Row:
    return {"target": name, "goal": goal, "value": value, "met": met, "evidence": evidence}


def _missing(name: str, goal: str, what: str) -> Row:
    return _check(name, goal, None, None, {"note": f"not measured in this run: {what}"})


def evaluate(result: Row) -> list[Row]:
    sync, peers = result["ours"]["sync"], result["peers"]
    floor = result["floor"]
    big = max((r["model_mb"] for r in sync), default=0.0)
    checks = []

    goal = "<= 0.5"
    name = f"ours / rpc-ps step, {big:g} MB, W=2, 1 shard, none"
    ours, rpc = _find(sync, model_mb=big, workers=2, shards=1, codec="none"), _find(
        peers, system="rpc-ps", model_mb=big, workers=2)
    if ours and rpc:
        ratio = ours["step_s"]["median"] / rpc["step_s"]["median"]
        checks.append(_check(name, goal, ratio, ratio <= 0.5, {
            "ours_step_s": ours["step_s"], "rpc_step_s": rpc["step_s"],
            "ours_cpu": _cpu(ours), "rpc_cpu": _cpu(rpc)}))
    else:
        checks.append(_missing(name, goal, "ours or rpc-ps at W=2"))

    for workers in sorted({r["workers"] for r in floor if r["system"] == "grpc-stream"}):
        name = f"bare gRPC round / ours step, {big:g} MB, W={workers} (share of the floor)"
        bare = _find(floor, system="grpc-stream", model_mb=big, workers=workers)
        ours = _find(sync, model_mb=big, workers=workers, shards=1, codec="none")
        if bare and ours:
            share = bare["round_s"]["median"] / ours["step_s"]["median"]
            checks.append(_check(name, ">= 0.8", share, share >= 0.8, {
                "bare_round_s": bare["round_s"], "ours_step_s": ours["step_s"],
                "bare_cpu": _cpu(bare), "ours_cpu": _cpu(ours)}))

    name = f"ours topk:ratio=0.01 / gloo all-reduce step, {big:g} MB, W=2"
    topk = _find(sync, model_mb=big, workers=2, shards=1, codec="topk:ratio=0.01")
    gloo = _find(peers, system="gloo-allreduce", model_mb=big, workers=2)
    if topk and gloo:
        ratio = topk["step_s"]["median"] / gloo["step_s"]["median"]
        checks.append(_check(name, "< 1", ratio, ratio < 1, {
            "topk_step_s": topk["step_s"], "gloo_step_s": gloo["step_s"],
            "topk_cpu": _cpu(topk), "gloo_cpu": _cpu(gloo), "under_caps": _cap_ratios(result)}))
    else:
        checks.append(_missing(name, "< 1", "ours topk or gloo at W=2"))

    fixed = _fixed_overhead(sync)
    for row in sync:
        if row["model_mb"] != big or row["codec"] != "none":
            continue
        memory = row["memory"]
        worst = max(memory["peak_over_idle_x_model"])
        proportional = max((peak - idle - fixed) / held for peak, idle, held in zip(
            memory["peak_rss"], memory["idle_rss"], memory["held_bytes"]))
        checks.append(_check(
            f"server peak RSS above idle / model bytes held, {big:g} MB, W={row['workers']}, "
            f"{row['shards']} shard(s)", f"<= {memory['budget_x_model']}", worst,
            worst <= memory["budget_x_model"],
            {**memory, "fixed_overhead_bytes": fixed, "without_fixed_x_model": proportional}))

    soak = result["soak"]
    checks.append(_check(
        f"server RSS growth over a {soak['pushes']}-push async soak (after the first 10%)",
        f"<= {soak['tolerance_bytes'] / 2**20:.0f} MiB", soak["growth_bytes"] / 2**20,
        soak["growth_bytes"] <= soak["tolerance_bytes"],
        {k: v for k, v in soak.items() if k != "samples"}))
    return checks


def _cap_ratios(result: Row) -> dict[str, float]:
    """ours topk / gloo step at each link cap of the capped comparison."""
    rows = result["caps"]["rows"]
    out = {}
    for cap in result["caps"]["caps"]:
        topk = _find(rows, system="ours", codec="topk:ratio=0.01", cap=cap)
        gloo = _find(rows, system="gloo-allreduce", cap=cap)
        if topk and gloo:
            out[cap] = topk["step_s"]["median"] / gloo["step_s"]["median"]
    return out


def _fixed_overhead(sync: list[Row]) -> int:
    """What a server adds above idle whatever the model's size: the smallest model's peak
    above idle, less its budget (e.g. modules imported on the first registration)."""
    smallest = min((r["model_mb"] for r in sync), default=0.0)
    excess = [peak - idle - r["memory"]["budget_x_model"] * held for r in sync
              if r["model_mb"] == smallest
              for peak, idle, held in zip(r["memory"]["peak_rss"], r["memory"]["idle_rss"],
                                          r["memory"]["held_bytes"])]
    return max(0, min(excess, default=0))

"""`paramserver status`: print what each shard of a running job holds; `--watch` redraws
the table every few seconds, `--json` prints one JSON list (one object per shard) for
scripts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from paramserver.cli.security_options import add_client_security, client_security_from_args
from paramserver.errors import ParamServerError
from paramserver.federated.privacy import PrivacyReport
from paramserver.security.roles import printable
from paramserver.status import ServerStatus


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("status", help="show each shard's tensors, version and workers")
    parser.add_argument("--servers", "--server", dest="servers", default="127.0.0.1:50051",
                        help="server host:port, or several comma-separated")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds per call, and to keep retrying an unreachable server")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list, one object per shard (null: unreachable)")
    parser.add_argument("--watch", type=float, nargs="?", const=2.0, default=None,
                        metavar="SECONDS", help="redraw every SECONDS (2) until Ctrl-C")
    add_client_security(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    addresses = [a.strip() for a in args.servers.split(",") if a.strip()]
    if args.watch is None:
        return _show(addresses, args)
    try:
        while True:
            if not args.json:
                print("\x1b[H\x1b[2J", end="")  # clear the terminal, cursor home
            print(time.strftime("%H:%M:%S"), flush=True)
            _show(addresses, args)
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _show(addresses: list[str], args: argparse.Namespace) -> int:
    from workers.connection import ServerConnection

    failed = 0
    records: list[dict[str, Any] | None] = []
    for address in addresses:
        connection = ServerConnection(address, timeout_s=args.timeout, retry_s=0.0,
                                      security=client_security_from_args(args))
        try:
            status = connection.status()
            records.append(status_record(address, status))
            if not args.json:
                print(format_status(address, status))
        except ParamServerError as error:
            records.append(None)
            if not args.json:
                print(f"{address}: cannot read status: {error.code.name}: {error.message}\n")
            failed += 1
        finally:
            connection.close()
    if args.json:
        print(json.dumps(records), flush=True)
    return 1 if failed else 0


def status_record(address: str, status: ServerStatus) -> dict[str, Any]:
    """One shard's status as plain JSON values (the fields `format_status` shows)."""
    plan = status.plan
    return {
        "address": address, "shard_index": status.shard_index,
        "num_shards": plan.num_shards if plan else 0, "version": status.version,
        "mode": status.mode.value, "expected_workers": status.expected_workers,
        "pending_pushes": status.pending_pushes, "optimizer": status.optimizer,
        "server_version": status.server_version,
        "advertise_address": status.advertise_address,
        "model_bytes": status.layout.nbytes if status.layout is not None else 0,
        "workers": [{"worker_id": w.worker_id, "role": w.role.value, "pushes": w.pushes,
                     "seconds_since_seen": w.seconds_since_seen,
                     "push_codec": str(w.push_codec), "incarnation": w.incarnation}
                    for w in status.workers],
        "restored_version": status.restored_version, "evicted": list(status.evicted),
        "rejoins": list(status.rejoins), "max_lead": status.max_lead,
        "dropouts": list(status.dropouts), "skipped_rounds": list(status.skipped_rounds),
        "tables": [dataclasses.asdict(t) for t in status.tables],
        "privacy": dataclasses.asdict(status.privacy) if status.privacy else None,
    }


def format_status(address: str, status: ServerStatus) -> str:
    """A table of one shard: its tensors and slices, bytes, version, connected workers."""
    plan = status.plan
    shard = f"shard {status.shard_index} of {plan.num_shards}" if plan else "no model"
    lines = [(f"== {address}  {shard}  version {status.version}  mode {status.mode.value}  "
              f"expected workers {status.expected_workers}  pending pushes "
              f"{status.pending_pushes}"),
             f"   optimizer {status.optimizer}  advertised {status.advertise_address or '-'}"]
    if status.layout is not None:
        lines.append(f"   {'tensor (or slice)':<40} {'shape':<16} {'dtype':<10} {'bytes':>12}")
        for spec in status.layout.tensors:
            dtype = str(spec.dtype).removeprefix("torch.")
            lines.append(f"   {printable(spec.name, 120):<40} {list(spec.shape)!s:<16} {dtype:<10} "
                         f"{spec.nbytes:>12}")
        lines.append(f"   {'total':<68} {status.layout.nbytes:>12}")
    lines += _table_lines(status)
    lines.append(f"   connected: {len(status.workers)}")
    for worker in status.workers:
        lines.append(f"   {worker.role.value:<9} {printable(worker.worker_id):<20} pushes "
                     f"{worker.pushes:<8} "
                     f"seen {worker.seconds_since_seen:.1f}s ago  codec {worker.push_codec}  "
                     f"incarnation {worker.incarnation}")
    events = [("restored from the checkpoint of step", [str(status.restored_version)]
               if status.restored_version >= 0 else []),
              ("evicted (worker@step)", list(status.evicted)),
              ("rejoined (worker@held->version)", list(status.rejoins)),
              ("largest SSP lead", [str(status.max_lead)] if status.mode.value == "ssp" else []),
              ("federated dropouts (client@round)", list(status.dropouts)),
              ("skipped rounds", [str(r) for r in status.skipped_rounds])]
    lines += [f"   {label}: {', '.join(printable(v) for v in values)}"
              for label, values in events if values]
    lines += _privacy_lines(status.privacy)
    return "\n".join(lines) + "\n"


def _table_lines(status: ServerStatus) -> list[str]:
    """Row-sparse tables (issue #16): declared rows, rows stored on this shard, bytes."""
    if not status.tables:
        return []
    header = (f"   {'table':<24} {'declared rows':>14} {'dim':>6} {'stored rows':>12} "
              f"{'bytes':>12} {'version':>8}  optimizer")
    lines = [header]
    lines += [f"   {printable(t.name, 60):<24} {t.declared_rows:>14} {t.dim:>6} "
              f"{t.materialized_rows:>12} {t.bytes:>12} {t.version:>8}  {t.optimizer}"
              for t in status.tables]
    return lines


def _privacy_lines(report: PrivacyReport | None) -> list[str]:
    return [] if report is None else [f"   privacy: {describe_privacy(report)}"]


def describe_privacy(p: PrivacyReport) -> str:
    """'epsilon 2.31 at delta 1e-05 after 12 rounds (central DP, z 1.1, C 1, ...)'."""
    budget = f", target {p.target_epsilon:g}" if p.target_epsilon else ""
    spent = ": budget spent, no further round" if p.budget_spent else ""
    return (f"epsilon {p.epsilon:.3f} at delta {p.delta:g} after {p.rounds} rounds "
            f"({p.mode} DP, noise multiplier {p.noise_multiplier:.4g}, clip norm "
            f"{p.clip_norm:g}, sampling rate {p.sampling_rate:.3g}{budget}){spent}")

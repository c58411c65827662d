"""`paramserver status`: print what each shard of a running job holds."""

from __future__ import annotations

import argparse

from paramserver.cli.security_options import add_client_security, client_security_from_args
from paramserver.errors import ParamServerError
from paramserver.security.roles import printable
from paramserver.status import ServerStatus


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("status", help="show each shard's tensors, version and workers")
    parser.add_argument("--servers", "--server", dest="servers", default="127.0.0.1:50051",
                        help="server host:port, or several comma-separated")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds per call, and to keep retrying an unreachable server")
    add_client_security(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workers.connection import ServerConnection

    failed = 0
    for address in [a.strip() for a in args.servers.split(",") if a.strip()]:
        connection = ServerConnection(address, timeout_s=args.timeout, retry_s=args.timeout,
                                      security=client_security_from_args(args))
        try:
            print(format_status(address, connection.status()))
        except ParamServerError as error:
            print(f"{address}: cannot read status: {error.code.name}: {error.message}\n")
            failed += 1
        finally:
            connection.close()
    return 1 if failed else 0


def format_status(address: str, status: ServerStatus) -> str:
    """A table of one shard: its tensors and slices, bytes, version, connected workers."""
    plan = status.plan
    shard = f"shard {status.shard_index} of {plan.num_shards}" if plan else "no model"
    lines = [(f"== {address}  {shard}  version {status.version}  mode {status.mode.value}  "
              f"expected workers {status.expected_workers}  pending pushes "
              f"{status.pending_pushes}"),
             f"   optimizer {status.optimizer}"]
    if status.layout is not None:
        lines.append(f"   {'tensor (or slice)':<40} {'shape':<16} {'dtype':<10} {'bytes':>12}")
        for spec in status.layout.tensors:
            dtype = str(spec.dtype).removeprefix("torch.")
            lines.append(f"   {printable(spec.name, 120):<40} {list(spec.shape)!s:<16} {dtype:<10} "
                         f"{spec.nbytes:>12}")
        lines.append(f"   {'total':<68} {status.layout.nbytes:>12}")
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
    return "\n".join(lines) + "\n"

"""`paramserver status`: print what a running server holds."""

from __future__ import annotations

import argparse

from paramserver.errors import ParamServerError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("status", help="show a server's model, version and workers")
    parser.add_argument("--server", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workers.connection import ServerConnection

    connection = ServerConnection(args.server, timeout_s=args.timeout)
    try:
        status = connection.status()
    except ParamServerError as error:
        print(f"cannot read status of {args.server}: {error.code.name}: {error.message}")
        return 1
    finally:
        connection.close()
    print(f"server {args.server}  version {status.version}  mode {status.mode.value}  "
          f"expected workers {status.expected_workers}  optimizer {status.optimizer}")
    print(f"pending pushes for the open step: {status.pending_pushes}")
    if status.layout is None:
        print("no model registered")
    else:
        print(f"{'tensor':<32} {'shape':<16} {'dtype':<10} {'bytes':>12}")
        for spec in status.layout.tensors:
            print(f"{spec.name:<32} {str(list(spec.shape)):<16} "
                  f"{str(spec.dtype).removeprefix('torch.'):<10} {spec.nbytes:>12}")
        print(f"{'total':<60} {status.layout.nbytes:>12}")
    for worker in status.workers:
        print(f"{worker.role.value:<9} {worker.worker_id:<20} pushes {worker.pushes:<8} "
              f"seen {worker.seconds_since_seen:.1f}s ago  codec {worker.push_codec}")
    return 0

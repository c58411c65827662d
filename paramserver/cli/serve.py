"""`paramserver serve`: run one parameter server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paramserver.cli.options import add_logging, setup_logging
from paramserver.cli.security_options import add_server_security, server_security_from_args
from paramserver.cli.server_options import add_server_options, config_from_args
from paramserver.server.app import ServerHooks, serve
from paramserver.server.auth import check_binding
from paramserver.server.checkpoint import RefusedCheckpoint


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("serve", help="run a parameter server",
                            description="Run a parameter server until SIGTERM or SIGINT.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind: an interface's IP, an IPv6 literal, or 0.0.0.0 "
                             "/ :: for all (127.0.0.1)")
    parser.add_argument("--advertise-address", default="", metavar="HOST:PORT",
                        help="the address workers should dial, shown by `status` (default: "
                             "the bound one); e.g. ps-0.ps:50051 behind a Service")
    parser.add_argument("--port", type=int, default=50051, help="port; 0 picks a free one")
    parser.add_argument("--port-file", type=Path,
                        help="write the bound port here once serving (for --port 0)")
    parser.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: off)")
    parser.add_argument("--health-port", type=int, default=0, metavar="PORT",
                        help="also answer the gRPC health service alone, plaintext, on "
                             "HOST:PORT, for probes without TLS such as the kubelet's (0: off)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds to drain in-flight calls on shutdown (5)")
    add_server_options(parser)
    add_server_security(parser)
    add_logging(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, hooks: ServerHooks | None = None) -> int:
    """Serve with the parsed options; `hooks` inject faults (tests only)."""
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
        security = server_security_from_args(args)
        check_binding(args.host, security)
    except (ValueError, OSError) as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    try:
        serve(config, args.host, args.port, args.port_file, args.grace, hooks, security,
              advertise_address=args.advertise_address, metrics_port=args.metrics_port or None,
              health_port=args.health_port or None)
    except RefusedCheckpoint as error:  # raised on start-up, before serving
        print(f"serve: refused checkpoint: {error}", file=sys.stderr)
        return 2
    return 0

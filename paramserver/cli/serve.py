"""`paramserver serve`: run one parameter server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from pathlib import Path

from paramserver.cli.common import add_logging, add_server, server_config_fields, setup_logging
from paramserver.codecs import CodecLimits, codec_names
from paramserver.optimizer import OptimizerConfig
from paramserver.server.app import serve
from paramserver.server.config import ServerConfig
from paramserver.types import Aggregation, Mode


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("serve", help="run a parameter server",
                            description="Run a parameter server until SIGTERM or SIGINT.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="port; 0 picks a free one")
    parser.add_argument("--port-file", type=Path,
                        help="write the bound port here once serving (for --port 0)")
    parser.add_argument("--workers", type=int, default=1,
                        help="sync mode: number of workers that form the job (1)")
    parser.add_argument("--codecs", default=",".join(codec_names()),
                        help=f"allowed codecs, comma-separated (default: all known: "
                             f"{', '.join(codec_names())})")
    parser.add_argument("--min-ratio", type=float, default=0.001,
                        help="smallest top-k/random-k ratio accepted; smaller offers are "
                             "raised to it (0.001)")
    parser.add_argument("--min-bits", type=int, default=2,
                        help="fewest quantisation bits accepted; fewer are raised to it (2)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds to drain in-flight calls on shutdown (5)")
    add_server(parser)
    add_logging(parser)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        mode=Mode(args.mode),
        expected_workers=args.workers,
        aggregation=Aggregation(args.aggregate),
        optimizer=OptimizerConfig(name=args.optimizer, lr=args.lr, momentum=args.momentum,
                                  weight_decay=args.weight_decay),
        codecs=CodecLimits(allowed=tuple(c.strip() for c in args.codecs.split(",") if c.strip()),
                           min_ratio=args.min_ratio, min_bits=args.min_bits),
        **server_config_fields(args),
    )


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    serve(config_from_args(args), args.host, args.port, args.port_file, args.grace)
    return 0

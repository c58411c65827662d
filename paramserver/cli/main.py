"""Entry point of the `paramserver` command."""

from __future__ import annotations

import argparse
import sys

from paramserver import __version__
from paramserver.cli import bench, certs, client, federated, launch, serve, status, worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paramserver",
        description="A gRPC parameter server for distributed PyTorch training.")
    parser.add_argument("--version", action="version", version=f"paramserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, worker, launch, status, federated, client, certs, bench):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

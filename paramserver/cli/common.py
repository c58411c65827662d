"""Argument groups and helpers that several subcommands share."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from paramserver.types import CodecSpec


def add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log verbosity (default: WARNING)")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def add_training(parser: argparse.ArgumentParser) -> None:
    """Options of the built-in digits trainer, shared by `worker` and `launch`."""
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=10, help="passes over the data (10)")
    group.add_argument("--batch-size", type=int, default=32, help="per-worker batch size (32)")
    group.add_argument("--data", choices=["split", "replicate"], default="split",
                       help="split: disjoint shard per worker; replicate: all data on every "
                            "worker in its own order (split)")
    group.add_argument("--seed", type=int, default=0, help="model init and shuffling seed")
    group.add_argument("--codec", type=parse_codecs, default=(CodecSpec("none"),),
                       help="codecs to offer for pushes, most preferred first: SPEC[,SPEC...], "
                            "e.g. 'topk:ratio=0.01,qsgd:bits=8,none' (default: none)")
    group.add_argument("--pull-codec", type=parse_codecs, default=(CodecSpec("none"),),
                       help="codecs to offer for pulls: none, fp16 or bf16 (default: none)")
    group.add_argument("--no-error-feedback", action="store_true",
                       help="do not keep the residual of biased codecs such as top-k")
    group.add_argument("--ef-momentum", type=float, default=0.0,
                       help="momentum correction for biased codecs (DGC): the worker applies "
                            "this Nesterov momentum before compressing; run the server with "
                            "--momentum 0 (default 0: off)")


def add_server(parser: argparse.ArgumentParser) -> None:
    """Options of a parameter server, shared by `serve` and `launch`."""
    group = parser.add_argument_group("server")
    group.add_argument("--mode", choices=["sync", "async", "ssp", "federated", "fedbuff"],
                       default="sync",
                       help="sync: aggregate one push per live worker per step; async: apply "
                            "each push as it arrives; ssp: async, but nobody runs more than "
                            "--staleness steps ahead of the slowest; federated: rounds of "
                            "sampled clients; fedbuff: buffered asynchronous federated (sync)")
    group.add_argument("--aggregate", choices=["mean", "weighted"], default="mean",
                       help="sync: plain mean, or weighted by each push's sample count (mean)")
    group.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    group.add_argument("--lr", type=float, default=0.1, help="learning rate (0.1)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    group.add_argument("--weight-decay", type=float, default=0.0)
    faults = parser.add_argument_group("faults and consistency")
    faults.add_argument("--lease-timeout", type=float, default=10.0,
                        help="seconds without a heartbeat before a worker is evicted; "
                             "0 never evicts (10)")
    faults.add_argument("--sync-quorum", type=int, default=0,
                        help="sync: apply a step once this many workers pushed (backup "
                             "workers); late pushes are ABORTED (0: wait for every live worker)")
    faults.add_argument("--staleness", type=int, default=2,
                        help="ssp: how many steps a worker may run ahead of the slowest (2)")
    faults.add_argument("--max-staleness", type=int, default=None,
                        help="async: refuse (ABORTED) gradients computed on parameters more "
                             "than this many updates old (default: no bound)")
    faults.add_argument("--checkpoint-dir", type=Path,
                        help="checkpoint here, and resume from the newest valid checkpoint "
                             "at start ('{index}' is replaced by the shard's index in launch)")
    faults.add_argument("--checkpoint-every", type=int, default=0,
                        help="steps between checkpoints; one is always written on SIGTERM (0)")
    fed = parser.add_argument_group("federated rounds (--mode federated / fedbuff)")
    fed.add_argument("--fraction", type=float, default=1.0,
                     help="share of the live clients sampled each round (1.0)")
    fed.add_argument("--min-clients", type=int, default=1,
                     help="clients sampled at least, and reports a round needs (1)")
    fed.add_argument("--round-timeout", type=float, default=60.0,
                     help="seconds before a round closes with whoever reported (60)")
    fed.add_argument("--min-completion-rate", type=float, default=0.0,
                     help="share of the sampled clients that must report, or the round is "
                          "skipped (0)")
    fed.add_argument("--clip-norm", type=float, default=0.0,
                     help="clip each client update to this L2 norm (0: off)")
    fed.add_argument("--reject-norm", type=float, default=1e6,
                     help="refuse client updates above this L2 norm (1e6; 0: off)")
    fed.add_argument("--buffer", type=int, default=2,
                     help="fedbuff: apply once this many updates arrived (2)")
    fed.add_argument("--sampling-seed", type=int, default=0, help="client sampling seed (0)")


def server_config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The fault and consistency options as ServerConfig fields."""
    from paramserver.federated.config import FederatedConfig

    federated = FederatedConfig(
        fraction=args.fraction, seed=args.sampling_seed, min_clients=args.min_clients,
        round_timeout_s=args.round_timeout, min_completion_rate=args.min_completion_rate,
        clip_norm=args.clip_norm, reject_norm=args.reject_norm, buffer=args.buffer)
    return {"lease_s": args.lease_timeout, "sync_quorum": args.sync_quorum,
            "staleness": args.staleness, "max_staleness": args.max_staleness,
            "checkpoint_dir": args.checkpoint_dir, "checkpoint_every": args.checkpoint_every,
            "federated": federated}


def server_cli_args(args: argparse.Namespace) -> list[str]:
    """`add_server` options back as command-line arguments (launch passes them on)."""
    out = ["--mode", args.mode, "--aggregate", args.aggregate, "--optimizer", args.optimizer,
           "--lr", str(args.lr), "--momentum", str(args.momentum), "--weight-decay",
           str(args.weight_decay), "--lease-timeout", str(args.lease_timeout),
           "--sync-quorum", str(args.sync_quorum), "--staleness", str(args.staleness),
           "--checkpoint-every", str(args.checkpoint_every), "--fraction", str(args.fraction),
           "--min-clients", str(args.min_clients), "--round-timeout", str(args.round_timeout),
           "--min-completion-rate", str(args.min_completion_rate), "--clip-norm",
           str(args.clip_norm), "--reject-norm", str(args.reject_norm), "--buffer",
           str(args.buffer), "--sampling-seed", str(args.sampling_seed)]
    if args.max_staleness is not None:
        out += ["--max-staleness", str(args.max_staleness)]
    if args.checkpoint_dir is not None:
        out += ["--checkpoint-dir", str(args.checkpoint_dir)]
    return out


def parse_codecs(text: str) -> tuple[CodecSpec, ...]:
    """argparse type for a codec offer list; see `CodecSpec.parse_list`."""
    try:
        return CodecSpec.parse_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)

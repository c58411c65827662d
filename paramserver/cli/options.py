"""Options several commands share (logging, the digits trainer, codec offers, --report)
and what they turn into; the server's options are in `server_options`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paramserver.types import CodecSpec

if TYPE_CHECKING:
    from workers.trainer import TrainConfig


def add_logging(parser: argparse.ArgumentParser) -> None:
    """--log-level."""
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log verbosity (default: WARNING)")


def setup_logging(level: str) -> None:
    """Log to stderr at `level`, with time, level and logger name."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def add_training(parser: argparse.ArgumentParser) -> None:
    """Options of the built-in digits trainer, shared by `worker` and `launch`."""
    group = parser.add_argument_group("training")
    group.add_argument("--model", choices=["digits", "ctr"], default="digits",
                       help="digits: the 8x8 digits MLP (test accuracy); ctr: the DLRM-like "
                            "click-through-rate model on synthetic data (test AUC) (digits)")
    group.add_argument("--ctr-spec", choices=["tiny", "small", "huge"], default="tiny",
                       help="--model ctr: the synthetic data set and table sizes (tiny: "
                            "100 to 10k rows; small: 1k to 1M; huge: a 100M-row table, "
                            "sparse tables only) (tiny)")
    group.add_argument("--table-optimizer", default="adam:lr=0.03",
                       help="--model ctr: the row-wise optimizer of its sparse embedding "
                            "tables, e.g. 'adagrad:lr=0.05' (adam:lr=0.03, SparseAdam's rule; "
                            "the dense part uses the servers' --optimizer, e.g. adam --lr "
                            "0.002)")
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
                       help="codecs to offer for pulls: none, fp16, bf16, or the delta codecs "
                            "topk, qsgd (table rows under qsgd: quantised values, docs/wire.md "
                            "section 11) (default: none)")
    group.add_argument("--no-error-feedback", action="store_true",
                       help="do not keep the residual of biased codecs such as top-k")
    group.add_argument("--ef-momentum", type=float, default=0.0,
                       help="momentum correction for biased codecs (DGC): the worker applies "
                            "this Nesterov momentum before compressing; run the server with "
                            "--momentum 0 (default 0: off)")
    group.add_argument("--shm", action="store_true",
                       help="offer servers on this host the shared-memory data plane: "
                            "payloads through /dev/shm, used where the server runs with "
                            "--shm-data-plane (issue #14; trusted co-located peers only)")


def train_config(args: argparse.Namespace, servers: str, worker_id: str, rank: int = 0,
                 num_workers: int = 1, **fields: Any) -> TrainConfig:
    """The `add_training` options (and `fields`) as the trainer's config."""
    from workers.trainer import TrainConfig

    return TrainConfig(servers=servers, worker_id=worker_id, rank=rank,
                       num_workers=num_workers, epochs=args.epochs, batch_size=args.batch_size,
                       data=args.data, seed=args.seed, codecs=args.codec,
                       pull_codecs=args.pull_codec, error_feedback=not args.no_error_feedback,
                       ef_momentum=args.ef_momentum, model=args.model,
                       ctr_spec=args.ctr_spec, table_optimizer=args.table_optimizer,
                       shm=args.shm,
                       **fields)


def parse_codecs(text: str) -> tuple[CodecSpec, ...]:
    """argparse type for a codec offer list; see `CodecSpec.parse_list`."""
    try:
        return CodecSpec.parse_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write a --report file atomically (nothing when `path` is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)

"""The server's command-line options, one row per `ServerConfig` field: the single source
from which `serve`, `launch` and `federated` add their flags, build a `ServerConfig`, and
turn a config back into `serve` arguments for the server processes they start.

Defaults come from the config dataclasses (a row overrides one only where the command line
deliberately differs); choices come from the enums and registries that define them.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paramserver.codecs import codec_names
from paramserver.federated.privacy import DPMode
from paramserver.optimizer import OPTIMIZERS
from paramserver.server.config import AsyncLearningRate, ServerConfig, UnusedGradients
from paramserver.transport import check_window, parse_size
from paramserver.types import Aggregation, Mode

_FROM_CONFIG: Any = object()  # sentinel: the default is the config's own
DEFAULTS = ServerConfig()


def _boolean(text: str) -> bool:
    """argparse type of an on/off flag that `serve_args` writes back as True/False."""
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return lowered in ("true", "1", "yes", "on")


def _names(text: str) -> tuple[str, ...]:
    """argparse type of a comma-separated list of names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _window(text: str) -> int:
    """argparse type of a flow-control window: a size ('8MiB') within gRPC's bounds."""
    try:
        return check_window(parse_size(text), "window")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@dataclass(frozen=True)
class ServerOption:
    """One flag: where its value goes in ServerConfig ("lease_s", "optimizer.lr") and how
    it is parsed, shown and written back."""

    flag: str
    field: str  # dotted path into ServerConfig
    group: str  # the --help section
    help: str
    type: Callable[[str], Any] | None = None  # default: the type of the default value
    choices: tuple[str, ...] | None = None
    default: Any = _FROM_CONFIG

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def config_default(self) -> Any:
        value: Any = DEFAULTS
        for part in self.field.split("."):
            value = getattr(value, part)
        return value

    def cli_default(self) -> Any:
        """The default as argparse holds it (an enum as its value)."""
        value = self.config_default() if self.default is _FROM_CONFIG else self.default
        return value.value if isinstance(value, enum.Enum) else value

    def to_config(self, value: Any) -> Any:
        """The parsed value as the config field holds it (an enum from its value)."""
        current = self.config_default()
        return type(current)(value) if isinstance(current, enum.Enum) else value

    def to_text(self, value: Any) -> str:
        if isinstance(value, enum.Enum):
            return str(value.value)
        if isinstance(value, tuple):
            return ",".join(value)
        return str(value)

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        default = self.cli_default()
        kind = self.type or (type(default) if default is not None else str)
        shown = self.to_text(default) if default is not None else "none"
        if isinstance(default, bool):  # `--flag` alone turns it on
            group.add_argument(self.flag, dest=self.dest, type=_boolean, nargs="?", const=True,
                               default=default, help=f"{self.help} (default: {shown})")
            return
        group.add_argument(self.flag, dest=self.dest, type=kind, choices=self.choices,
                           default=default, help=f"{self.help} (default: {shown})")


SERVER = "server"
FAULTS = "faults and consistency"
FEDERATED = "federated rounds (--mode federated / fedbuff)"
CODECS = "codec negotiation"
LIMITS = "limits (what one request may cost the server)"

OPTIONS: tuple[ServerOption, ...] = (
    ServerOption("--workers", "expected_workers", SERVER,
                 "sync mode: number of workers that form the job"),
    ServerOption("--mode", "mode", SERVER,
                 "sync: aggregate one push per live worker per step; async: apply each push "
                 "as it arrives; ssp: async, but nobody runs more than --staleness steps "
                 "ahead of the slowest; federated: rounds of sampled clients; fedbuff: "
                 "buffered asynchronous federated", choices=tuple(m.value for m in Mode)),
    ServerOption("--aggregate", "aggregation", SERVER,
                 "sync: plain mean, or weighted by each push's sample count",
                 choices=tuple(a.value for a in Aggregation)),
    ServerOption("--optimizer", "optimizer.name", SERVER, "server optimizer",
                 choices=OPTIMIZERS),
    ServerOption("--lr", "optimizer.lr", SERVER, "learning rate"),
    ServerOption("--momentum", "optimizer.momentum", SERVER, "SGD momentum"),
    ServerOption("--weight-decay", "optimizer.weight_decay", SERVER,
                 "weight decay of the server optimizer"),
    ServerOption("--beta1", "optimizer.beta1", SERVER, "Adam beta1"),
    ServerOption("--beta2", "optimizer.beta2", SERVER, "Adam beta2"),
    ServerOption("--eps", "optimizer.eps", SERVER, "Adam epsilon"),
    ServerOption("--lease-timeout", "lease_s", FAULTS,
                 "seconds without a heartbeat before a worker is evicted; 0 never evicts"),
    ServerOption("--sync-quorum", "sync_quorum", FAULTS,
                 "sync: apply a step once this many workers pushed (backup workers); late "
                 "pushes are ABORTED (0: wait for every live worker)"),
    ServerOption("--staleness", "staleness", FAULTS,
                 "ssp: how many steps a worker may run ahead of the slowest", default=2),
    ServerOption("--async-lr", "async_lr", SERVER,
                 "async: the learning rate of each push: workers = lr / max(W, staleness + 1) "
                 "for W = --workers (one sync step's rate; staler pushes weaker), "
                 "staleness = lr / staleness, constant = lr",
                 choices=tuple(r.value for r in AsyncLearningRate)),
    ServerOption("--unused-gradients", "unused_gradients", SERVER,
                 "sync: a worker that pushed no gradient for a tensor counts as a zero "
                 "gradient in its mean (zero, as DDP), or is left out of it (skip)",
                 choices=tuple(u.value for u in UnusedGradients)),
    ServerOption("--max-staleness", "max_staleness", FAULTS,
                 "async: refuse (ABORTED) gradients computed on parameters more than this "
                 "many updates old; none: no bound", type=int),
    ServerOption("--checkpoint-dir", "checkpoint_dir", FAULTS,
                 "checkpoint here, and resume from the newest valid checkpoint at start "
                 "('{index}' is replaced by the shard's index in launch)", type=Path),
    ServerOption("--checkpoint-every", "checkpoint_every", FAULTS,
                 "steps between checkpoints; one is always written on SIGTERM"),
    ServerOption("--checkpoint-key", "checkpoint_key", FAULTS,
                 "a file holding a secret key (at least 16 bytes): checkpoints are signed "
                 "with HMAC-SHA256 under it, and unsigned or forged ones are refused at start",
                 type=Path),
    ServerOption("--reform-timeout", "reform_timeout_s", FAULTS,
                 "after a restart from a checkpoint, a sync/SSP/federated job waits this many "
                 "seconds for the workers it had before it steps again, then goes on with "
                 "whoever is back"),
    ServerOption("--fraction", "federated.fraction", FEDERATED,
                 "share of the live clients sampled each round"),
    ServerOption("--min-clients", "federated.min_clients", FEDERATED,
                 "clients sampled at least, and reports a round needs"),
    ServerOption("--round-timeout", "federated.round_timeout_s", FEDERATED,
                 "seconds before a round closes with whoever reported"),
    ServerOption("--min-completion-rate", "federated.min_completion_rate", FEDERATED,
                 "share of the sampled clients that must report, or the round is skipped"),
    ServerOption("--clip-norm", "federated.clip_norm", FEDERATED,
                 "clip each client update to this L2 norm (0: off)"),
    ServerOption("--reject-norm", "federated.reject_norm", FEDERATED,
                 "refuse client updates above this L2 norm (0: off)"),
    ServerOption("--buffer", "federated.buffer", FEDERATED,
                 "fedbuff: apply once this many updates arrived"),
    ServerOption("--sampling-seed", "federated.seed", FEDERATED, "client sampling seed"),
    ServerOption("--dp", "dp.mode", FEDERATED,
                 "DP-FedAvg (issue #17): clip each update to --clip-norm C and add Gaussian "
                 "noise of std z*C to the round's sum, on the server (central) or as each "
                 "sampled client's share (distributed); needs uniform weighting",
                 choices=tuple(m.value for m in DPMode)),
    ServerOption("--noise-multiplier", "dp.noise_multiplier", FEDERATED,
                 "--dp: z, the noise std on a round's sum over --clip-norm"),
    ServerOption("--dp-delta", "dp.delta", FEDERATED,
                 "--dp: the delta the accountant reports epsilon at"),
    ServerOption("--target-epsilon", "dp.target_epsilon", FEDERATED,
                 "--dp: open no round that would take epsilon above this (0: no budget)"),
    ServerOption("--population", "federated.population", FEDERATED,
                 "sample from clients client-0..client-{N-1}, connected or not, and wait for "
                 "every sampled one (simulations; 0: the live clients)"),
    ServerOption("--secure-aggregation", "federated.secure_aggregation", FEDERATED,
                 "federated: secure aggregation (SecAgg+): the server only sees masked, "
                 "quantised updates and learns only their weighted sum; every client must "
                 "offer it too (client --secure-aggregation)"),
    ServerOption("--secagg-threshold", "federated.secagg_threshold", FEDERATED,
                 "secure aggregation: Shamir threshold as a share of each client's k "
                 "neighbours and itself (t = ceil(ratio * (k + 1))); a round survives up to "
                 "k + 1 - t dropouts per neighbourhood"),
    ServerOption("--secagg-clip", "federated.secagg_clip", FEDERATED,
                 "secure aggregation: update elements are clipped to +-this before they are "
                 "quantised (the decoded mean is within clip / levels / 2 of the true one)"),
    ServerOption("--codecs", "codecs.allowed", CODECS,
                 f"allowed codecs, comma-separated (known: {', '.join(codec_names())})",
                 type=_names),
    ServerOption("--min-ratio", "codecs.min_ratio", CODECS,
                 "smallest top-k/random-k ratio accepted; smaller offers are raised to it"),
    ServerOption("--min-bits", "codecs.min_bits", CODECS,
                 "fewest quantisation bits accepted; fewer are raised to it"),
    ServerOption("--max-model-bytes", "limits.max_model_bytes", LIMITS,
                 "largest model (this shard's parameters) a Register may declare"),
    ServerOption("--max-tensor-rank", "limits.max_tensor_rank", LIMITS,
                 "most dimensions of one tensor"),
    ServerOption("--max-tensor-numel", "limits.max_tensor_numel", LIMITS,
                 "most elements of one tensor"),
    ServerOption("--max-worker-id", "limits.max_worker_id_chars", LIMITS,
                 "longest worker id, in characters"),
    ServerOption("--max-codec-chars", "limits.max_codec_chars", LIMITS,
                 "longest codec offer (name and parameters), in characters"),
    ServerOption("--max-sessions", "limits.max_sessions", LIMITS,
                 "most open sessions, workers and observers together"),
    ServerOption("--max-long-polls", "limits.max_long_polls", LIMITS,
                 "most pulls and JoinRounds waiting at once; more are RESOURCE_EXHAUSTED"),
    ServerOption("--max-held-part-bytes", "limits.max_held_part_bytes", LIMITS,
                 "most bytes of push parts held for unfinished multi-part pushes"),
    ServerOption("--member-idle-timeout", "limits.member_idle_s", LIMITS,
                 "sync steps and SSP pulls wait only for workers that registered or pushed "
                 "within this many seconds (a handshake alone never stalls a job); 0: "
                 "forever"),
    ServerOption("--max-step-call-bytes", "limits.max_step_call_bytes", LIMITS,
                 "offer the one-message Step call (a push and its pull) to workers whose "
                 "push payload and pulled tensors each take at most this many bytes; 0: "
                 "not offered (issue #14)"),
    ServerOption("--recv-window", "recv_window", SERVER,
                 "HTTP/2 flow-control window of each stream the server receives (pushes), "
                 "e.g. 2MiB, 8MiB: one push stream moves at most a window per round trip, so "
                 "raise it to link rate x round trip on long links (1 Gbit/s x 40 ms = 5MB); "
                 "each concurrent push may park that much in server memory (issue #14)",
                 type=_window),
    ServerOption("--shm-data-plane", "shm_data_plane", SERVER,
                 "accept the shared-memory data plane that workers on this host offer "
                 "(worker --shm): payloads move through their /dev/shm segments, gRPC "
                 "stays the control plane; for trusted peers of this server's user "
                 "(issue #14)"),
)
BY_FLAG = {option.flag: option for option in OPTIONS}


def select(*, without: Iterable[str] = (), groups: Iterable[str] | None = None,
           ) -> tuple[ServerOption, ...]:
    """The rows of `groups` (default: all), less the flags in `without`."""
    skip, wanted = set(without), None if groups is None else set(groups)
    unknown = skip - BY_FLAG.keys()
    if unknown:
        raise ValueError(f"unknown server options {sorted(unknown)}")
    return tuple(o for o in OPTIONS
                 if o.flag not in skip and (wanted is None or o.group in wanted))


def add_server_options(parser: argparse.ArgumentParser,
                       options: Sequence[ServerOption] = OPTIONS) -> None:
    """Add `options` to `parser`, one argument group per section."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in options:
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        option.add_to(groups[option.group])


def config_from_args(args: argparse.Namespace, options: Sequence[ServerOption] = OPTIONS,
                     **fields: Any) -> ServerConfig:
    """A ServerConfig from parsed arguments: the value of each of `options` (the ones the
    command offers), the command-line default of every other row, and then `fields`
    (top-level ServerConfig fields the command decides itself) over them.

    Raises ValueError (naming the flag) when the values are inconsistent."""
    offered = {option.flag for option in options}
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for option in OPTIONS:
        parsed = getattr(args, option.dest) if option.flag in offered else option.cli_default()
        value = option.to_config(parsed)
        head, _, rest = option.field.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, values in nested.items():
        top[head] = dataclasses.replace(getattr(DEFAULTS, head), **values)
    return ServerConfig(**{**top, **fields})


def serve_args(config: ServerConfig) -> list[str]:
    """`paramserver serve` arguments that rebuild `config` (chunk size and the long-poll
    bound have no flag: they must be the defaults)."""
    if (config.chunk_bytes, config.max_wait_s) != (DEFAULTS.chunk_bytes, DEFAULTS.max_wait_s):
        raise ValueError("chunk_bytes and max_wait_s cannot be passed to `serve`")
    out: list[str] = []
    for option in OPTIONS:
        value: Any = config
        for part in option.field.split("."):
            value = getattr(value, part)
        if value is not None:
            out += [option.flag, option.to_text(value)]
    return out

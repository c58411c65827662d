"""The server options table: flags build the config, and a config survives the trip through
`serve` arguments (how launch and federated configure their server processes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from paramserver.cli.main import build_parser
from paramserver.cli.server_options import OPTIONS, config_from_args, serve_args
from paramserver.federated import strategies
from paramserver.federated.config import FederatedConfig
from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig
from paramserver.types import Aggregation, Mode


def _serve_config(*argv: str) -> ServerConfig:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_every_row_names_a_config_field_and_flags_are_unique() -> None:
    assert len({o.flag for o in OPTIONS}) == len(OPTIONS)
    assert len({o.field for o in OPTIONS}) == len(OPTIONS)
    for option in OPTIONS:
        option.config_default()  # raises AttributeError on a stale field path


def test_serve_defaults_are_the_config_defaults_but_the_ssp_bound() -> None:
    assert _serve_config() == dataclasses.replace(ServerConfig(), staleness=2)


def test_flags_land_in_their_fields() -> None:
    config = _serve_config("--mode", "fedbuff", "--aggregate", "weighted", "--optimizer", "adam",
                           "--lr", "0.01", "--beta2", "0.99", "--workers", "3",
                           "--max-staleness", "4", "--checkpoint-dir", "/tmp/ck",
                           "--checkpoint-every", "5", "--fraction", "0.5", "--sampling-seed",
                           "7", "--codecs", "none,topk", "--min-bits", "4")
    assert config.mode is Mode.FEDBUFF and config.aggregation is Aggregation.WEIGHTED
    assert config.optimizer == OptimizerConfig(name="adam", lr=0.01, beta2=0.99)
    assert (config.expected_workers, config.max_staleness) == (3, 4)
    assert (config.checkpoint_dir, config.checkpoint_every) == (Path("/tmp/ck"), 5)
    assert config.federated == FederatedConfig(fraction=0.5, seed=7)
    assert config.codecs.allowed == ("none", "topk") and config.codecs.min_bits == 4


@pytest.mark.parametrize("config", [
    ServerConfig(),
    ServerConfig(mode=Mode.SSP, staleness=3, lease_s=0.0, max_staleness=9,
                 checkpoint_dir=Path("ck-{index}"), checkpoint_every=2),
    ServerConfig(mode=Mode.FEDERATED, expected_workers=10,
                 aggregation=strategies.get("fedadam").aggregation,
                 optimizer=strategies.get("fedadam").server_optimizer,
                 federated=FederatedConfig(fraction=0.3, round_timeout_s=3.0, reject_norm=0.0)),
    ServerConfig(mode=Mode.FEDERATED, federated=FederatedConfig(
        secure_aggregation=True, secagg_threshold=0.75, secagg_clip=2.0)),
])
def test_a_config_survives_the_trip_through_serve_arguments(config: ServerConfig) -> None:
    assert _serve_config(*serve_args(config)) == config


def test_inconsistent_values_name_the_flag() -> None:
    with pytest.raises(ValueError, match="--checkpoint-every and --checkpoint-key need --checkpoint-dir"):
        _serve_config("--checkpoint-every", "3")


def test_secure_aggregation_is_an_on_off_flag_of_federated_rounds() -> None:
    config = _serve_config("--mode", "federated", "--secure-aggregation")
    assert config.federated.secure_aggregation
    assert not _serve_config("--mode", "federated", "--secure-aggregation", "false"
                             ).federated.secure_aggregation
    with pytest.raises(ValueError, match="--secure-aggregation runs with --mode federated"):
        _serve_config("--mode", "fedbuff", "--secure-aggregation")

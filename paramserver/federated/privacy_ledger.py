"""DP-FedAvg's privacy ledger in a server checkpoint: epsilon survives a restart.

A restarted server must go on from the privacy its rounds already spent, never from zero
(that would report too small an epsilon: a silently false guarantee). The checkpoint's
`extra` therefore holds, under "privacy", the accountant's ledger: (round, q, effective z)
of every round applied before the checkpoint's version, which is all the RDP accountant
needs to recompute epsilon exactly, with the settings that give that epsilon its meaning
and whether the budget was spent. Rounds are filtered by number, so the ledger matches the
saved parameters even when a round closes while the checkpoint is written: a round is
accounted before it is applied, and round r applied makes version r + 1.

Restoring checks the settings against the checkpoint's (`check`). What a restart may change
and what it may not, and why:
- --noise-multiplier may change: each round's own z is in the ledger, and RDP composes
  rounds of different noise exactly (dropouts already make z vary between rounds).
- --clip-norm may change: z is relative to C, so a round's privacy depends on z alone.
- --dp mode may not: central and distributed protect against different parties (the
  server sees single updates under central DP), so an epsilon over a mix claims neither.
- --dp-delta may not: epsilon is stated at a delta; the rounds before and after would be
  reported at different deltas under one number.
- --target-epsilon may not: a restart must not drop or move the budget the federation was
  started with (a missing flag would otherwise let it spend without bound).
- A checkpoint written without --dp is refused by a --dp server (its rounds spent an
  unknown, unbounded privacy), and a checkpoint holding a ledger by a server without --dp
  (its next rounds would not be private while the ledger claims they were).

Checkpoints without "privacy" (all those written before this ledger existed, and every one
written without --dp) load exactly as before on a server without --dp.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from paramserver.federated.privacy import DPConfig, PrivacyAccountant

log = logging.getLogger(__name__)

KEY = "privacy"  # the entry of a checkpoint's `extra`
LEDGER_FORMAT = 1


def ledger_state(accountant: PrivacyAccountant, version: int) -> dict[str, Any]:
    """The JSON-able ledger of the rounds applied before `version` (the checkpoint's)."""
    ledger = [list(event) for event in list(accountant.ledger) if event[0] < version]
    spent_at = accountant.spent_at
    spent = spent_at is not None and spent_at <= version
    config = accountant.config
    return {"format": LEDGER_FORMAT, "mode": config.mode.value, "delta": config.delta,
            "noise_multiplier": config.noise_multiplier, "clip_norm": accountant.clip_norm,
            "target_epsilon": config.target_epsilon, "rounds": ledger,
            "budget_spent": spent, "spent_at": spent_at if spent else None}


def check(saved: dict[str, Any] | None, config: DPConfig, version: int) -> None:
    """ValueError, naming the mismatch, unless a server running `config` may resume a
    checkpoint of `version` holding `saved` (its "privacy" entry, None when it has none)."""
    if saved is None:
        if config.on:
            raise ValueError(
                f"the checkpoint (step {version}) was written without --dp: the privacy its "
                "rounds spent is unknown, so no epsilon could be reported; start the --dp "
                "federation from an empty --checkpoint-dir")
        return
    if not config.on:
        raise ValueError(
            f"the checkpoint holds a DP-FedAvg privacy ledger (--dp {saved['mode']}, "
            f"--dp-delta {saved['delta']}, {len(saved['rounds'])} rounds): restart with "
            "its --dp settings; without --dp the next rounds would not be private")
    if saved.get("format") != LEDGER_FORMAT:
        raise ValueError(f"privacy ledger format {saved.get('format')}; this server reads "
                         f"{LEDGER_FORMAT}")
    mismatches = [f"{flag} {mine} (the checkpoint's: {theirs})" for flag, mine, theirs in (
        ("--dp", config.mode.value, saved["mode"]),
        ("--dp-delta", config.delta, saved["delta"]),
        ("--target-epsilon", config.target_epsilon, saved["target_epsilon"]))
        if mine != theirs]
    if mismatches:
        raise ValueError("the checkpoint's privacy ledger was spent under other settings: "
                         + "; ".join(mismatches) + ". Restart with the checkpoint's values")
    _check_rounds(saved["rounds"], version)


def _check_rounds(rounds: list[list[float]], version: int) -> None:
    for event in rounds:
        round_, q, z = event
        if not (0 <= round_ < version and 0 <= q <= 1 and z > 0 and math.isfinite(z)):
            raise ValueError(f"privacy ledger entry {event} is not a round before step "
                             f"{version} at a rate in [0, 1] with noise > 0")


def restore(saved: dict[str, Any] | None, accountant: PrivacyAccountant | None,
            config: DPConfig, version: int) -> None:
    """Check (`check`) and install a checkpoint's ledger into `accountant` (None: no
    --dp)."""
    check(saved, config, version)
    if saved is None or accountant is None:
        return
    ledger = [(int(r), float(q), float(z)) for r, q, z in saved["rounds"]]
    accountant.restore(ledger, bool(saved["budget_spent"]), saved.get("spent_at"))
    if saved["noise_multiplier"] != config.noise_multiplier:
        log.warning("--noise-multiplier %g, the checkpoint's rounds ran at %g: the ledger "
                    "composes both (RDP adds the rounds' curves)", config.noise_multiplier,
                    saved["noise_multiplier"])
    log.warning("privacy ledger restored: %d rounds, epsilon %.4g at delta %g%s",
                len(ledger), accountant.epsilon, config.delta,
                " (budget spent: no further round)" if accountant.budget_spent else "")

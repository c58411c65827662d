"""A shard's whole state, read and installed over the wire: checkpoints from the training
loop (`ps.state_dict()` / `ps.load_state_dict()`, issue #18).

The state travels as a server checkpoint's payload (`checkpoint.encode_state`): version,
layout, plan, parameters and optimizer state, and the row-sparse tables (issue #16: rows,
their optimizer state and versions), read back with weights_only=True. Installing
is for fresh servers: a server takes a state for the model it holds while it is still at
version 0 with no push pending, and answers a state it already holds (same version and
parameters: a second worker loading the same checkpoint) without change; anything else is
refused, so a checkpoint never silently rewinds a job that is training.

Under --dp the state carries the privacy ledger as a server checkpoint does
(`federated.privacy_ledger`), and installing it follows the same rules: a fresh --dp server
goes on from the epsilon the state had spent, and a state whose ledger does not fit this
server's --dp settings (or that has none, under --dp) is refused, never installed with its
privacy forgotten.
"""

from __future__ import annotations

from paramserver.errors import FailedPrecondition, InvalidArgument
from paramserver.federated import privacy_ledger
from paramserver.federated.privacy import DPConfig, PrivacyAccountant
from paramserver.server.checkpoint import ShardState, decode_state, encode_state
from paramserver.server.store import ParameterStore, state_digest
from paramserver.server.tables import TableService


def read_state(store: ParameterStore, tables: TableService | None = None,
               accountant: PrivacyAccountant | None = None) -> bytes:
    """This shard's state as checkpoint payload bytes (its row-sparse tables and, under
    --dp, its privacy ledger included)."""
    version, params, optimizer = store.snapshot()
    layout, plan = store.require_layout(), store.plan
    assert plan is not None
    extra = ({} if accountant is None else
             {privacy_ledger.KEY: privacy_ledger.ledger_state(accountant, version)})
    return encode_state(ShardState(version, layout, plan, store.shard_index, params,
                                   optimizer, extra, tables.snapshot() if tables else {}))


def install_state(store: ParameterStore, blob: bytes, pending_pushes: int,
                  tables: TableService | None = None, dp: DPConfig | None = None,
                  accountant: PrivacyAccountant | None = None) -> int:
    """Install `blob` on a fresh shard (see the module docstring); the version it holds."""
    try:
        state = decode_state(blob)
    except Exception as error:  # noqa: BLE001 - any undecodable payload is the caller's
        raise InvalidArgument(f"the state does not decode: {error}") from None
    layout = store.require_layout()
    with store.lock:
        assert store.plan is not None
        if layout.describe_difference(state.layout) or state.plan != store.plan \
                or state.shard_index != store.shard_index:
            raise FailedPrecondition(
                f"the state is of another model or shard (shard {state.shard_index}); load "
                "it with the same model, onto servers listed in the same order")
        if store.version == state.version and \
                state_digest(state.version, state.params) == state_digest(store.version,
                                                                          store.params):
            return store.version  # already installed (another worker loaded it first)
        if store.version != 0 or pending_pushes:
            raise FailedPrecondition(
                f"this server is at version {store.version} with {pending_pushes} pushes "
                f"pending: load a state (version {state.version}) onto fresh servers, "
                "before the first step")
        _install_privacy(state, dp, accountant)
        store.restore(state.layout, state.plan, state.shard_index, state.params,
                      state.optimizer, state.version)
        if tables is not None and state.tables:
            tables.restore(state.tables)
    return state.version


def _install_privacy(state: ShardState, dp: DPConfig | None,
                     accountant: PrivacyAccountant | None) -> None:
    """The state's privacy ledger into `accountant`; FailedPrecondition when it does not fit
    this server's --dp settings (`privacy_ledger.check`)."""
    try:
        privacy_ledger.restore(state.extra.get(privacy_ledger.KEY), accountant,
                               dp or DPConfig(), state.version)
    except ValueError as error:
        raise FailedPrecondition(f"the state's privacy: {error}") from None

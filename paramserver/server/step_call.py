"""Serve a Step call (issue #14, docs/wire.md section 5f): a whole push, then the pull of the
version it leads to, in one unary call.

The push goes through `PushIntake` exactly as a Push stream does (same checks, same order,
same codes, the same exactly-once ledger); the pull through `core.pull` exactly as a Pull
does, so a sync handler waits for the step to close as a pull of the next version waits:
in a `LongPolls` slot (--max-long-polls, kept below the server's RPC threads), never a
thread of its own beyond that, so W handlers waiting for a step cannot starve the pool.
Before the push, the Step's own checks, so that a request whose pull would be refused
changes nothing:

 a. the server offers Step (--max-step-call-bytes > 0)                   [UNIMPLEMENTED]
 b. the request opens with a PushHeader (intake check 1)              [INVALID_ARGUMENT]
 c. its session is open and a worker's (intake check 2)
                                       [FAILED_PRECONDITION / PERMISSION_DENIED]
 d. the push is whole (more_parts is false)                            [INVALID_ARGUMENT]
 e. its payload fits --max-step-call-bytes                           [RESOURCE_EXHAUSTED]
 f. a model is registered [FAILED_PRECONDITION], the pulled tensors exist [NOT_FOUND], the
    pull codec carries them [INVALID_ARGUMENT], and they fit --max-step-call-bytes
                                                                     [RESOURCE_EXHAUSTED]

A request refused by d-f still uses up its push sequence in the ledger, as a push the
intake refuses does (intake check 4 comes first there), so the worker's next push follows
on; when the ledger itself refuses the sequence, that refusal is the answer.
"""

from __future__ import annotations

import threading

import grpc

from paramserver.codecs import Codec
from paramserver.errors import InvalidArgument, ParamServerError, ResourceExhausted
from paramserver.security.roles import Principal
from paramserver.server.assembly import first_message
from paramserver.server.core import ParameterServerCore
from paramserver.server.pull import check_pull_codec, pulled_specs
from paramserver.step_call import StepAnswer, StepCall
from paramserver.types import PushHeader


def serve_step(core: ParameterServerCore, call: StepCall, timeout_s: float,
               cancelled: threading.Event | None = None, *,
               caller: Principal | None = None) -> StepAnswer:
    """The push's answer and the encoded PullResponse messages of version >=
    max(call.min_version, the answer's version); errors as `core.push` / `core.pull`."""
    limit = core.config.limits.max_step_call_bytes
    if limit <= 0:  # a
        raise ParamServerError("this server does not offer Step (--max-step-call-bytes 0): "
                               "push and pull on the streams", grpc.StatusCode.UNIMPLEMENTED)
    header = call.push[0] if call.push else None
    if not isinstance(header, PushHeader):  # b: refused as a Push stream's first message is
        first_message(iter(call.push), "push")
        raise InvalidArgument("push stream must open with a PushHeader")
    record = core.members.require_worker(header.session_id, caller)  # c
    try:
        _check_request(core, call, header, record.pull_encoder, limit)  # d-f
    except ParamServerError:
        _use_up_sequence(core, header, record.worker_id, record.incarnation)
        raise
    result = core.push(iter(call.push), caller=caller)
    pulled = core.pull(header.session_id, max(call.min_version, result.version),
                       list(call.tensors), timeout_s, cancelled, call.held_version,
                       caller=caller)
    return StepAnswer(push=result, pull=tuple(pulled))


def _check_request(core: ParameterServerCore, call: StepCall, header: PushHeader,
                   pull_codec: Codec, limit: int) -> None:
    if header.more_parts:  # d
        raise InvalidArgument("a Step carries a whole push: send parts (more_parts) on Push")
    _check_fits("push payload", call.payload_nbytes, limit)  # e
    specs = pulled_specs(core.store.require_layout(), call.tensors)  # f
    check_pull_codec(pull_codec, specs)
    _check_fits("pulled tensors", sum(s.nbytes for s in specs), limit)


def _use_up_sequence(core: ParameterServerCore, header: PushHeader, worker_id: str,
                     incarnation: int) -> None:
    """Record a refused Step's push as refused in the ledger (a retry of it is tried again,
    the next sequence follows on); the ledger's own refusal (fenced, replayed, a gap) wins."""
    if not header.sequence or header.incarnation != incarnation:
        return
    if core.ledger.begin(worker_id, header.incarnation, header.sequence, timeout_s=0) is None:
        core.ledger.finish(worker_id, header.incarnation, header.sequence, None)


def _check_fits(what: str, nbytes: int, limit: int) -> None:
    if nbytes > limit:
        raise ResourceExhausted(f"Step {what} of {nbytes} bytes; this server takes at most "
                                f"{limit} (--max-step-call-bytes): push and pull on the "
                                "streams")

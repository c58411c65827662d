"""A connection's retries: exponential backoff until `retry_s` has passed, and a final error
that says how often it was tried (and, over TLS, what a refused certificate looks like)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import grpc

from paramserver import serde
from paramserver.errors import InvalidArgument, ParamServerError, from_rpc_error
from paramserver.transport import tls_refusal

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BACKOFF_S = 2.0


class Retried(Protocol):
    """What the retry loop reads and counts on a connection."""

    address: str
    retry_s: float
    retries: int  # calls that were tried again
    tls: bool


def retrying(attempt: Callable[[], T], target: Retried,
             retried: tuple[grpc.StatusCode, ...]) -> T:
    """Run `attempt` until it succeeds, fails with a code not in `retried`, or
    `target.retry_s` has passed."""
    deadline = time.monotonic() + target.retry_s
    delay, tries = 0.05, 0
    while True:
        tries += 1
        try:
            return attempt()
        except grpc.RpcError as rpc_error:
            error = tls_refusal(rpc_error, target.address) or from_rpc_error(rpc_error)
        except ParamServerError as own_error:
            error = own_error
        if error.code not in retried or time.monotonic() + delay > deadline:
            _explain(error, tries, target)
            raise error from None
        log.debug("%s: %s; retrying in %.2fs", target.address, error.message, delay)
        target.retries += 1
        time.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF_S)


def _explain(error: ParamServerError, tries: int, target: Retried) -> None:
    """Add to a final error's message how often it was tried, and what a TLS server that
    closes the connection at once most likely means."""
    message = error.message
    if tries > 1:
        message += (f" (gave up after {tries} attempts over {target.retry_s:.0f}s to "
                    f"{target.address})")
    if target.tls and error.code == grpc.StatusCode.UNAVAILABLE:
        message += ("; over TLS this is also what a server that refused this client's "
                    "certificate looks like: check --tls-cert/--tls-key (signed by the "
                    "server's client CA, not expired)")
    error.args = (message,)


def parsed_answer(response: T) -> T:
    """A server's answer, or InvalidArgument when it did not parse."""
    if isinstance(response, serde.MalformedMessage):
        raise InvalidArgument(f"the server's answer: {response.reason}")
    return response

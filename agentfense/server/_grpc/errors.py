"""The one mapping of the server's errors to gRPC statuses.

Every refusal leaves the server as ``GRPCError(status, message, details=reason)``: the status
code a ``SandboxError`` carries (upstream's codes, for compatibility), its sentence, and its
class's ``reason``, which ``agentfense._error_details`` puts in the status details so that
clients map errors by kind. Nothing else in the server builds a ``GRPCError``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ...errors import InvalidConfigurationError, ResourceLimitExceededError, SandboxError

_log = logging.getLogger("agentfense.server")
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def status_error(err: SandboxError) -> GRPCError:
    """The ``GRPCError`` that tells the client of ``err``."""
    return GRPCError(Status(err.code), err.message, details=err.reason)


def invalid(message: str) -> GRPCError:
    """A malformed request (INVALID_ARGUMENT)."""
    return status_error(InvalidConfigurationError(message))


@contextmanager
def grpc_errors() -> Iterator[None]:
    """Re-raise a ``SandboxError`` from the block as its ``GRPCError``; and running out of
    file descriptors, wherever it struck, as RESOURCE_EXHAUSTED (the server's state, not a
    fault of its: the call may succeed once others let theirs go)."""
    try:
        yield
    except SandboxError as err:
        raise status_error(err) from None
    except OSError as err:
        if err.errno not in _OUT_OF_DESCRIPTORS:
            raise
        _log.warning("a call was refused: the server is out of file descriptors (%s)", err)
        refused = ResourceLimitExceededError(
            "the server is out of file descriptors; close sessions or stop sandboxes, or "
            "raise its limit (RLIMIT_NOFILE)"
        )
        raise status_error(refused) from None

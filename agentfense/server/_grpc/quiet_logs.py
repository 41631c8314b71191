"""grpclib's per-call lines out of INFO.

grpclib's server logs at INFO every call whose client went away ("Request was cancelled:
Stream reset by remote party") or whose deadline passed ("Deadline exceeded"): one line per
cancelled call, which is the SDK's normal way to cancel remote work. Those records are
lowered to DEBUG (kept when grpclib's logger is enabled for DEBUG, dropped otherwise);
everything else grpclib logs (its errors, with their tracebacks) is left as it is.
"""

from __future__ import annotations

import logging

_LOGGER = "grpclib.server"
_PER_CALL = ("Request was cancelled", "Deadline exceeded")


class _PerCallToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not str(record.msg).startswith(_PER_CALL):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_per_call_logs() -> None:
    """Install the filter on grpclib's server logger (once per process)."""
    logger = logging.getLogger(_LOGGER)
    if not any(isinstance(f, _PerCallToDebug) for f in logger.filters):
        logger.addFilter(_PerCallToDebug())

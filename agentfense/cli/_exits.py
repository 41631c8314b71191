"""The CLI's own exit codes (docs/cli.md, "Exit codes"); every other code is the command's."""

import signal

EXIT_TIMEOUT = 124  # the command ran past --timeout and was killed (as timeout(1) says it)
EXIT_FAILED = 125  # agentfense itself failed: usage, no server, a refused request


def signal_exit_code(signum: int) -> int:
    """What a shell reports for a process that signal ``signum`` ended."""
    return 128 + signum


EXIT_INTERRUPTED = signal_exit_code(signal.SIGINT)
EXIT_BROKEN_PIPE = signal_exit_code(signal.SIGPIPE)

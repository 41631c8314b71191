"""AgentFense: least-privilege sandboxes for AI agents.

The async SDK (``AsyncSandbox``, ``AsyncSandboxClient``) runs identically under trio and
asyncio; ``Sandbox`` and ``SandboxClient`` are its blocking mirror; the server is
``agentfense serve``.
"""

# The public names are imported on first use (PEP 562): importing one part of the package
# (the pytest plugin that every pytest session loads, say) does not load the SDK and its
# transport. The type checker sees the imports below; ``_HOMES`` is where ``__getattr__``
# finds each name (tests/test_exports.py checks the two agree).
import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from agentfense._rule_ranking import RuleShadowedWarning as RuleShadowedWarning
    from agentfense.client._client import AsyncSandboxClient as AsyncSandboxClient
    from agentfense.client._events import EventStream as EventStream
    from agentfense.client._stream import ExecStream as ExecStream
    from agentfense.client.sandbox import AsyncSandbox as AsyncSandbox
    from agentfense.client.session import AsyncSessionWrapper as AsyncSessionWrapper
    from agentfense.errors import AuthenticationError as AuthenticationError
    from agentfense.errors import CodebaseNotFoundError as CodebaseNotFoundError
    from agentfense.errors import CommandExecutionError as CommandExecutionError
    from agentfense.errors import CommandTimeoutError as CommandTimeoutError
    from agentfense.errors import ConnectionError as ConnectionError
    from agentfense.errors import InvalidConfigurationError as InvalidConfigurationError
    from agentfense.errors import PermissionDeniedError as PermissionDeniedError
    from agentfense.errors import ResourceLimitExceededError as ResourceLimitExceededError
    from agentfense.errors import SandboxError as SandboxError
    from agentfense.errors import SandboxNotFoundError as SandboxNotFoundError
    from agentfense.errors import SandboxNotRunningError as SandboxNotRunningError
    from agentfense.errors import SessionClosedError as SessionClosedError
    from agentfense.errors import SessionNotFoundError as SessionNotFoundError
    from agentfense.presets import extend_preset as extend_preset
    from agentfense.presets import get_preset as get_preset
    from agentfense.presets import get_preset_dicts as get_preset_dicts
    from agentfense.presets import list_presets as list_presets
    from agentfense.presets import register_preset as register_preset
    from agentfense.sync import Sandbox as Sandbox
    from agentfense.sync import SandboxClient as SandboxClient
    from agentfense.sync import SessionWrapper as SessionWrapper
    from agentfense.types import ChangeKind as ChangeKind
    from agentfense.types import Checkpoint as Checkpoint
    from agentfense.types import Codebase as Codebase
    from agentfense.types import CommitConflict as CommitConflict
    from agentfense.types import CommitMode as CommitMode
    from agentfense.types import CommitResult as CommitResult
    from agentfense.types import EntryType as EntryType
    from agentfense.types import EventKind as EventKind
    from agentfense.types import ExecResult as ExecResult
    from agentfense.types import FileChange as FileChange
    from agentfense.types import FileInfo as FileInfo
    from agentfense.types import NetworkConnection as NetworkConnection
    from agentfense.types import NetworkVerdict as NetworkVerdict
    from agentfense.types import OutputChunk as OutputChunk
    from agentfense.types import OutputStream as OutputStream
    from agentfense.types import PatternType as PatternType
    from agentfense.types import Permission as Permission
    from agentfense.types import PermissionRule as PermissionRule
    from agentfense.types import ResourceLimits as ResourceLimits
    from agentfense.types import RuntimeType as RuntimeType
    from agentfense.types import SandboxEvent as SandboxEvent
    from agentfense.types import SandboxInfo as SandboxInfo
    from agentfense.types import SandboxStatus as SandboxStatus
    from agentfense.types import SessionInfo as SessionInfo
    from agentfense.types import SessionStatus as SessionStatus
    from agentfense.types import TLSConfig as TLSConfig
    from agentfense.types import UploadResult as UploadResult

__version__ = "0.1.0"

__all__ = [
    "AsyncSandbox",
    "AsyncSandboxClient",
    "AsyncSessionWrapper",
    "AuthenticationError",
    "ChangeKind",
    "Checkpoint",
    "Codebase",
    "CodebaseNotFoundError",
    "CommandExecutionError",
    "CommandTimeoutError",
    "CommitConflict",
    "CommitMode",
    "CommitResult",
    "ConnectionError",
    "EntryType",
    "EventKind",
    "EventStream",
    "ExecResult",
    "ExecStream",
    "FileChange",
    "FileInfo",
    "InvalidConfigurationError",
    "NetworkConnection",
    "NetworkVerdict",
    "OutputChunk",
    "OutputStream",
    "PatternType",
    "Permission",
    "PermissionDeniedError",
    "PermissionRule",
    "ResourceLimitExceededError",
    "ResourceLimits",
    "RuleShadowedWarning",
    "RuntimeType",
    "Sandbox",
    "SandboxClient",
    "SandboxError",
    "SandboxEvent",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxStatus",
    "SessionClosedError",
    "SessionInfo",
    "SessionNotFoundError",
    "SessionStatus",
    "SessionWrapper",
    "TLSConfig",
    "UploadResult",
    "extend_preset",
    "get_preset",
    "get_preset_dicts",
    "list_presets",
    "register_preset",
]

_HOMES: dict[str, str] = {
    "AsyncSandbox": "agentfense.client.sandbox",
    "AsyncSandboxClient": "agentfense.client._client",
    "AsyncSessionWrapper": "agentfense.client.session",
    "AuthenticationError": "agentfense.errors",
    "Checkpoint": "agentfense.types",
    "Codebase": "agentfense.types",
    "SandboxEvent": "agentfense.types",
    "NetworkConnection": "agentfense.types",
    "NetworkVerdict": "agentfense.types",
    "EventKind": "agentfense.types",
    "FileChange": "agentfense.types",
    "EntryType": "agentfense.types",
    "CommitResult": "agentfense.types",
    "CommitMode": "agentfense.types",
    "CommitConflict": "agentfense.types",
    "ChangeKind": "agentfense.types",
    "CodebaseNotFoundError": "agentfense.errors",
    "CommandExecutionError": "agentfense.errors",
    "CommandTimeoutError": "agentfense.errors",
    "ConnectionError": "agentfense.errors",
    "ExecResult": "agentfense.types",
    "EventStream": "agentfense.client._events",
    "ExecStream": "agentfense.client._stream",
    "FileInfo": "agentfense.types",
    "InvalidConfigurationError": "agentfense.errors",
    "OutputChunk": "agentfense.types",
    "OutputStream": "agentfense.types",
    "PatternType": "agentfense.types",
    "Permission": "agentfense.types",
    "PermissionDeniedError": "agentfense.errors",
    "PermissionRule": "agentfense.types",
    "ResourceLimitExceededError": "agentfense.errors",
    "ResourceLimits": "agentfense.types",
    "RuleShadowedWarning": "agentfense._rule_ranking",
    "RuntimeType": "agentfense.types",
    "Sandbox": "agentfense.sync",
    "SandboxClient": "agentfense.sync",
    "SandboxError": "agentfense.errors",
    "SandboxInfo": "agentfense.types",
    "SandboxNotFoundError": "agentfense.errors",
    "SandboxNotRunningError": "agentfense.errors",
    "SandboxStatus": "agentfense.types",
    "SessionClosedError": "agentfense.errors",
    "SessionInfo": "agentfense.types",
    "SessionNotFoundError": "agentfense.errors",
    "SessionStatus": "agentfense.types",
    "SessionWrapper": "agentfense.sync",
    "TLSConfig": "agentfense.types",
    "UploadResult": "agentfense.types",
    "extend_preset": "agentfense.presets",
    "get_preset": "agentfense.presets",
    "get_preset_dicts": "agentfense.presets",
    "list_presets": "agentfense.presets",
    "register_preset": "agentfense.presets",
}


if not _typing.TYPE_CHECKING:  # (the type checker sees the imports: a misspelt name is an error)

    def __getattr__(name: str) -> object:
        """A public name, imported from its module on first use and kept."""
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(_importlib.import_module(home), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

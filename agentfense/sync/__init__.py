"""The blocking (sync) API: the async SDK run on the SDK's one private loop thread, through an
anyio blocking portal.

``with Sandbox.from_local("./project") as sandbox: sandbox.run("make test")``. Calling it
from inside a running event loop is an error: async code uses ``AsyncSandbox``.
"""

from agentfense.sync._client import SandboxClient as SandboxClient
from agentfense.sync._events import EventStream as EventStream
from agentfense.sync._stream import ExecStream as ExecStream
from agentfense.sync.sandbox import Sandbox as Sandbox
from agentfense.sync.session import SessionWrapper as SessionWrapper

__all__ = ["EventStream", "ExecStream", "Sandbox", "SandboxClient", "SessionWrapper"]

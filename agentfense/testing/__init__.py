"""Helpers for testing code that uses AgentFense against a real server."""

from agentfense.testing._server import ServerProcess as ServerProcess
from agentfense.testing._server import start_server_process as start_server_process

__all__ = ["ServerProcess", "start_server_process"]

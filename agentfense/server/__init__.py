"""The AgentFense server: codebase store, sandboxes, runtimes and the gRPC services."""

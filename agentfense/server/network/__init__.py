"""Sandboxes' network by allow-list: the policy (pure), the proxy the server runs for each
sandbox that has one, and its sockets in the sandbox's namespace. docs/network.md."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """The faults are the server's: one client backend is enough (the SDK's own tests run
    both)."""
    return "asyncio"

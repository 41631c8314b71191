import pytest
from hypothesis import HealthCheck, settings

# The suite runs beside servers, sandboxes and dockerd on two cores: how fast Hypothesis
# draws its inputs says nothing about the code under test, so neither a slow draw nor a slow
# example fails a test (the examples and their checks are unchanged).
settings.register_profile("agentfense", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("agentfense")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)

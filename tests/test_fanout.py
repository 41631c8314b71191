"""``agentfense.fanout``'s semantics with plain coroutines, on asyncio and trio."""

from __future__ import annotations

import asyncio
import gc
import inspect
import warnings
from collections.abc import Coroutine
from typing import Any, get_type_hints

import anyio
import pytest

from agentfense import AsyncSandbox, CommandTimeoutError
from agentfense.fanout import FromLocalOptions, gather, map_concurrently, open_sandboxes

pytestmark = pytest.mark.anyio


class Probe:
    """Records what the coroutines it makes went through."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.started: list[int] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []

    async def job(self, index: int, delay: float = 0.0, fail: BaseException | None = None) -> int:
        self.started.append(index)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(delay)
            if fail is not None:
                raise fail
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(index)
            raise
        finally:
            self.in_flight -= 1
        self.finished.append(index)
        return index


def _closed_unstarted(coroutine: Coroutine[Any, Any, Any]) -> bool:
    return inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


# -- results and bounds -----------------------------------------------------------------------


@pytest.mark.parametrize("use_map", [False, True], ids=["gather", "map_concurrently"])
async def test_results_come_in_input_order(use_map: bool) -> None:
    finished: list[int] = []
    done = [anyio.Event() for _ in range(6)]
    done[5].set()

    async def backwards(index: int) -> str:
        await done[index + 1].wait()  # the later ones finish first
        finished.append(index)
        done[index].set()
        return f"result {index}"

    with anyio.fail_after(5):
        if use_map:
            results = await map_concurrently(backwards, range(5))
        else:
            results = await gather(*(backwards(i) for i in range(5)))
    assert results == [f"result {i}" for i in range(5)]
    assert finished == [4, 3, 2, 1, 0]


async def test_without_a_limit_all_run_at_once() -> None:
    everyone_in = anyio.Event()
    count = 0

    async def wait_for_all(index: int) -> int:
        nonlocal count
        count += 1
        if count == 20:
            everyone_in.set()
        with anyio.fail_after(5):
            await everyone_in.wait()
        return index

    assert await map_concurrently(wait_for_all, range(20)) == list(range(20))


@pytest.mark.parametrize("limit", [1, 3, 10, 50])
async def test_limit_bounds_how_many_run_at_once(limit: int) -> None:
    probe = Probe()
    results = await gather(*(probe.job(i, 0.01) for i in range(10)), limit=limit)
    assert results == list(range(10))
    assert probe.most_in_flight == min(limit, 10)
    # Started in input order, each only once there was room for it.
    assert probe.started == list(range(10))


async def test_a_shared_capacity_limiter_bounds_several_calls_together() -> None:
    probe = Probe()
    limiter = anyio.CapacityLimiter(3)
    async with anyio.create_task_group() as tg:
        for base in (0, 100):
            tg.start_soon(
                lambda b: map_concurrently(
                    lambda i: probe.job(b + i, 0.01), range(8), limit=limiter
                ),
                base,
            )
    assert probe.most_in_flight == 3
    assert sorted(probe.finished) == [*range(8), *range(100, 108)]
    assert limiter.borrowed_tokens == 0


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
async def test_a_bad_limit_is_refused_and_nothing_is_left_unawaited(limit: Any) -> None:
    probe = Probe()
    coroutines = [probe.job(i) for i in range(3)]
    with pytest.raises(ValueError, match="limit must be a positive int"):
        await gather(*coroutines, limit=limit)
    assert all(_closed_unstarted(c) for c in coroutines)
    assert probe.started == []


async def test_nothing_to_do() -> None:
    assert await gather() == []
    assert await map_concurrently(Probe().job, [], limit=2) == []


# -- failing fast ------------------------------------------------------------------------------


async def test_one_failure_cancels_the_others_and_is_raised_as_is() -> None:
    probe = Probe()
    timeout = CommandTimeoutError("pytest took too long")
    with anyio.fail_after(5):
        with pytest.raises(CommandTimeoutError) as raised:
            await gather(
                probe.job(0, delay=30),
                probe.job(1, delay=0.05, fail=timeout),
                probe.job(2, delay=30),
                probe.job(3, delay=0.01),
            )
    assert raised.value is timeout
    assert sorted(probe.cancelled) == [0, 2]
    assert probe.finished == [3]
    assert probe.in_flight == 0


async def test_failing_fast_starts_nothing_more() -> None:
    probe = Probe()
    coroutines = [probe.job(0, fail=KeyError("first")), *(probe.job(i, 0.01) for i in range(1, 6))]
    with pytest.raises(KeyError):
        await gather(*coroutines, limit=2)
    # The one beside the failure was cancelled; the rest were closed without running.
    assert probe.started == [0, 1]
    assert probe.cancelled == [1]
    assert all(_closed_unstarted(c) for c in coroutines[2:])

    called: list[int] = []

    async def call(index: int) -> int:
        called.append(index)
        await anyio.sleep(0.01 if index == 0 else 30)
        if index == 0:
            raise KeyError(index)
        return index

    with anyio.fail_after(5), pytest.raises(KeyError):
        await map_concurrently(call, range(6), limit=2)
    assert called == [0, 1]


async def test_failures_during_the_cancellation_make_a_group() -> None:
    first = ValueError("first")

    async def fails() -> None:
        await anyio.sleep(0.01)
        raise first

    async def fails_when_cancelled() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            raise RuntimeError("cleanup failed") from None

    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as raised:
        await gather(fails(), fails_when_cancelled(), anyio.sleep(30))
    assert raised.value.exceptions[0] is first
    assert [type(e) for e in raised.value.exceptions] == [ValueError, RuntimeError]
    assert "2 of 3" in str(raised.value)


async def test_failures_at_the_same_moment_make_a_group() -> None:
    both_there = anyio.Event()

    async def first() -> None:
        await anyio.sleep(0.01)
        both_there.set()
        raise KeyError("first")

    async def second() -> None:
        with anyio.CancelScope(shield=True):  # fails before the cancellation can take effect
            await both_there.wait()
        raise LookupError("second")

    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as raised:
        await map_concurrently(lambda f: f(), [first, second])
    assert {type(e) for e in raised.value.exceptions} == {KeyError, LookupError}


async def test_a_function_that_fails_before_awaiting_counts_as_a_failure() -> None:
    def broken(item: int) -> Coroutine[Any, Any, int]:
        raise TypeError(f"bad item {item}")

    with pytest.raises(TypeError, match="bad item 0"):
        await map_concurrently(broken, [0])


# -- collecting every outcome ------------------------------------------------------------------


async def test_return_exceptions_lets_all_finish_and_keeps_the_order() -> None:
    probe = Probe()
    boom, bang = ValueError("boom"), CommandTimeoutError("slow")
    results = await gather(
        probe.job(0, delay=0.05),
        probe.job(1, fail=boom),
        probe.job(2, delay=0.02, fail=bang),
        probe.job(3, delay=0.01),
        return_exceptions=True,
        limit=2,
    )
    assert results == [0, boom, bang, 3]
    assert results[1] is boom
    assert results[2] is bang
    assert probe.cancelled == []
    assert sorted(probe.finished) == [0, 3]

    def broken(item: int) -> Coroutine[Any, Any, int]:
        raise TypeError(item)

    outcomes = await map_concurrently(broken, [1, 2], return_exceptions=True)
    assert [type(o) for o in outcomes] == [TypeError, TypeError]


# -- cancellation of the caller ---------------------------------------------------------------


@pytest.mark.parametrize("return_exceptions", [False, True])
async def test_cancelling_the_caller_cancels_everything_and_propagates(
    return_exceptions: bool,
) -> None:
    probe = Probe()
    coroutines = [probe.job(i, delay=30) for i in range(6)]
    with anyio.move_on_after(0.1) as scope:
        await gather(*coroutines, limit=2, return_exceptions=return_exceptions)
        pytest.fail("gather returned although its caller was cancelled")
    assert scope.cancelled_caught
    assert probe.started == [0, 1]
    assert sorted(probe.cancelled) == [0, 1]
    assert probe.in_flight == 0
    assert all(_closed_unstarted(c) for c in coroutines[2:])


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_wait_for_cancels_everything(anyio_backend: str) -> None:
    probe = Probe()
    coroutines = [probe.job(i, delay=30) for i in range(4)]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(gather(*coroutines, limit=3), timeout=0.1)
    assert sorted(probe.cancelled) == [0, 1, 2]
    assert probe.in_flight == 0
    assert _closed_unstarted(coroutines[3])
    # The surrounding task is not left with a pending cancellation.
    await anyio.sleep(0.01)


async def test_no_coroutine_is_left_never_awaited() -> None:
    probe = Probe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KeyError):
            await gather(
                probe.job(0, fail=KeyError()), *(probe.job(i) for i in range(1, 9)), limit=1
            )
        with anyio.move_on_after(0.05):
            await gather(*(probe.job(i, 30) for i in range(9)), limit=1, return_exceptions=True)
        gc.collect()
    assert [w for w in caught if "never awaited" in str(w.message)] == []


# -- open_sandboxes' options -------------------------------------------------------------------


def test_open_sandboxes_takes_every_option_of_from_local() -> None:
    hints = get_type_hints(AsyncSandbox.from_local)
    del hints["path"], hints["return"]
    assert get_type_hints(FromLocalOptions) == hints
    assert list(inspect.signature(AsyncSandbox.from_local).parameters)[1:] == list(hints)


async def test_open_sandboxes_refuses_one_string() -> None:
    with pytest.raises(TypeError, match="not one string"):
        async with open_sandboxes("./project"):
            pass

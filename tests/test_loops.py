"""Per-loop values: one per event loop, and closed with their loop when asked."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from channels_presence.loops import AtLoopEnd, LoopEnding, PerLoop


class Resource:
    def __init__(self) -> None:
        self.closed_on: asyncio.AbstractEventLoop | None = None

    async def aclose(self) -> None:
        await asyncio.sleep(0)  # a real await: the loop must still run
        self.closed_on = asyncio.get_running_loop()


def closing_registry() -> PerLoop[Resource]:
    return PerLoop(lambda loop: Resource(), close=Resource.aclose)


def test_each_loop_gets_its_own_value_and_closes_it_when_it_ends() -> None:
    registry = closing_registry()
    loops: list[asyncio.AbstractEventLoop] = []

    async def use() -> Resource:
        loops.append(asyncio.get_running_loop())
        value = registry.get()
        assert registry.get() is value
        assert value.closed_on is None
        return value

    first, second = asyncio.run(use()), asyncio.run(use())

    assert first is not second
    assert (first.closed_on, second.closed_on) == (loops[0], loops[1])


def test_a_popped_value_is_the_callers_to_close() -> None:
    registry = closing_registry()

    async def use() -> tuple[Resource, Resource | None]:
        value = registry.get()
        return value, registry.pop()

    value, popped = asyncio.run(use())

    assert popped is value and value.closed_on is None
    assert len(registry) == 0


def test_pop_all_hands_over_every_value_unclosed() -> None:
    registry = closing_registry()
    value = asyncio.run(_get(registry))
    # Its loop closed it as it ended; one made now is handed over open.
    assert value.closed_on is not None
    loop = asyncio.new_event_loop()
    fresh = loop.run_until_complete(_get(registry))
    [(of, popped)] = [item for item in registry.pop_all() if item[1] is fresh]
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    assert of is loop and popped.closed_on is None


def test_values_without_close_are_left_alone() -> None:
    registry: PerLoop[Resource] = PerLoop(lambda loop: Resource())
    assert asyncio.run(_get(registry)).closed_on is None


def test_a_loop_closed_without_shutting_down_runs_nothing_and_is_forgotten() -> None:
    registry = closing_registry()
    loop = asyncio.new_event_loop()
    stale = loop.run_until_complete(_get(registry))
    loop.close()  # no shutdown_asyncgens(): nothing can run on it now

    fresh = asyncio.run(_get(registry))

    gc.collect()  # a leftover generator would complain here (an error in this suite)
    assert stale.closed_on is None and fresh is not stale
    # The stale one was forgotten when another loop asked; the fresh one by
    # its own loop's end, which closed it.
    assert fresh.closed_on is not None
    assert len(registry) == 0


def test_a_value_asked_for_after_its_loops_end_closed_it_is_refused() -> None:
    """A task still running during the loop's shutdown (one the shutdown did
    not cancel) must not get the closed value (a Redis client would reconnect
    and leak) nor a new one (nothing would close it)."""
    registry = closing_registry()
    asked: list[BaseException | Resource] = []

    async def late() -> None:
        await asyncio.sleep(0)  # after the shutdown's closing step has run
        try:
            asked.append(registry.get())
        except LoopEnding as exc:
            asked.append(exc)

    async def straggle() -> Any:
        """An async generator finalised in the same shutdown, starting a task."""
        try:
            yield
        finally:
            # Started during shutdown_asyncgens(): runs while it finishes.
            await asyncio.ensure_future(late())

    async def main() -> Resource:
        value = registry.get()
        gen = straggle()
        await gen.__anext__()
        main.gen = gen  # type: ignore[attr-defined]  # kept alive until the shutdown
        return value

    value = asyncio.run(main())
    assert value.closed_on is not None
    assert len(asked) == 1 and isinstance(asked[0], LoopEnding), asked
    assert len(registry) == 0


def test_a_dropped_call_never_runs() -> None:
    ran: list[bool] = []

    async def close() -> None:
        ran.append(True)

    async def main() -> list[AtLoopEnd]:
        dropped, kept = AtLoopEnd(close), AtLoopEnd(close)
        dropped.drop()
        await asyncio.sleep(0)
        assert ran == []
        return [dropped, kept]

    ends = asyncio.run(main())
    assert ran == [True] and len(ends) == 2


async def _get(registry: PerLoop[Resource]) -> Resource:
    return registry.get()


def test_a_snapshot_holds_the_values_of_loops_still_open() -> None:
    registry: PerLoop[Resource] = PerLoop(lambda loop: Resource())
    loop = asyncio.new_event_loop()
    open_value = loop.run_until_complete(_get(registry))
    closed_value = asyncio.run(_get(registry))
    assert registry.snapshot() == [open_value] and closed_value not in registry.snapshot()
    loop.close()
    assert registry.snapshot() == []

"""The server's slots: first come, first served; a waiter that gives up leaves the queue; a free slot is
chosen by the longest cached prefix. Pyramids are stand-ins with a target cache."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from edge_spec.backend import _common_prefix
from edge_spec.slots import Slots


def _pyramid(cached: list[int]) -> Any:
    target = SimpleNamespace(cached=cached, n_seq=1)
    target.missing = lambda tokens, seq=0: len(tokens) - _common_prefix(target.cached, tokens)
    return SimpleNamespace(target=target)


def test_waiting_requests_get_slots_in_arrival_order() -> None:
    async def scenario() -> list[str]:
        slots = Slots([_pyramid([])])
        held = await slots.acquire([1, 2])
        served: list[str] = []

        async def request(name: str) -> None:
            slot = await slots.acquire([3])
            served.append(name)
            slots.release(slot)

        tasks = [asyncio.create_task(request(n)) for n in "abc"]
        await asyncio.sleep(0)  # let all three queue (an event-loop turn, not a timed wait)
        assert slots.queued == 3 and slots.busy == 1
        tasks[1].cancel()  # b's client goes away while it waits
        await asyncio.gather(tasks[1], return_exceptions=True)
        assert slots.queued == 2
        slots.release(held)
        await asyncio.gather(tasks[0], tasks[2])
        assert slots.queued == 0 and slots.busy == 0
        return served

    assert asyncio.run(scenario()) == ["a", "c"]


def test_a_released_slot_goes_to_the_first_waiter_not_to_the_free_list() -> None:
    """So a request arriving in between finds no free slot and queues behind the waiters."""

    async def scenario() -> None:
        slots = Slots([_pyramid([])])
        held = await slots.acquire([1])
        waiter = asyncio.create_task(slots.acquire([1]))
        await asyncio.sleep(0)  # the waiter queues
        slots.release(held)
        assert slots.busy == 1 and slots.queued == 0  # handed over before the waiter runs again
        slots.release(await waiter)
        assert slots.busy == 0

    asyncio.run(scenario())


def test_the_free_slot_with_the_longest_cached_prefix_is_chosen() -> None:
    async def scenario() -> tuple[int, int]:
        slots = Slots([_pyramid([9, 9, 9]), _pyramid([1, 2, 3, 4]), _pyramid([1, 2])])
        best = await slots.acquire([1, 2, 3, 4, 5, 6])
        reused = best.reusable([1, 2, 3, 4, 5, 6])
        slots.release(best)
        return best.index, reused

    assert asyncio.run(scenario()) == (1, 4)

"""The gateway's in-flight bound: refuses the excess at once, frees a slot when a stream closes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from common.errors import ResourceExhausted, Unavailable
from common.inference import EventStream, Finished, FinishReason, TextDelta, Usage
from controlplane.gateway_admission import InFlightLimit


async def _events() -> AsyncGenerator[Any, None]:
    yield TextDelta("hi")
    yield Finished(FinishReason.STOP, Usage(1, 1))


async def _start() -> EventStream:
    return _events()


def test_requests_past_the_limit_are_refused_until_one_is_closed() -> None:
    async def main() -> None:
        limit = InFlightLimit(2)
        first, second = await limit.run(_start), await limit.run(_start)
        with pytest.raises(ResourceExhausted, match="2 requests in flight"):
            await limit.run(_start)
        assert (limit.in_flight, limit.refused) == (2, 1)
        assert [type(e) async for e in first] == [TextDelta, Finished]
        assert limit.in_flight == 2  # read to the end but not closed yet
        await first.aclose()
        await first.aclose()  # a second close frees nothing more
        assert limit.in_flight == 1
        third = await limit.run(_start)
        await second.aclose()
        await third.aclose()
        assert limit.in_flight == 0

    asyncio.run(main())


def test_a_request_that_fails_to_start_frees_its_slot() -> None:
    async def failing() -> EventStream:
        raise Unavailable("no agent")

    async def main() -> None:
        limit = InFlightLimit(1)
        with pytest.raises(Unavailable):
            await limit.run(failing)
        assert limit.in_flight == 0
        await (await limit.run(_start)).aclose()

    asyncio.run(main())


def test_the_limit_must_admit_something() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InFlightLimit(0)

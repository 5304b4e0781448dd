"""The site-agent directory: answers cached for a while, the last one used while offline."""

from __future__ import annotations

import asyncio

from agent.control.site_agents import FRESH_S, SiteAgentDirectory
from common.policy.forwarding import ServingAgent


class ControlPlane:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.answer: tuple[str, str] | None = ("a-2", "10.0.0.2:8080")
        self.reachable = True

    async def find(self, agent: str) -> tuple[str, str] | None:
        self.asked.append(agent)
        if not self.reachable:
            raise ConnectionError("unreachable")
        return self.answer


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_reused_while_fresh_then_asked_again() -> None:
    cp, clock = ControlPlane(), Clock()
    directory = SiteAgentDirectory(cp.find, clock)
    assert asyncio.run(directory.find("shelf")) == (ServingAgent("a-2", "10.0.0.2:8080"),)
    assert asyncio.run(directory.find("shelf")) == (ServingAgent("a-2", "10.0.0.2:8080"),)
    assert cp.asked == ["shelf"]
    clock.now += FRESH_S
    cp.answer = ("a-2", "10.0.0.9:8080")  # it moved
    assert asyncio.run(directory.find("shelf")) == (ServingAgent("a-2", "10.0.0.9:8080"),)
    assert cp.asked == ["shelf", "shelf"]


def test_an_unknown_agent_is_none_and_remembered_as_such() -> None:
    cp = ControlPlane()
    cp.answer = None
    directory = SiteAgentDirectory(cp.find, Clock())
    assert asyncio.run(directory.find("nobody")) == ()
    assert asyncio.run(directory.find("nobody")) == ()
    assert cp.asked == ["nobody"]


def test_while_the_control_plane_is_unreachable_the_last_answer_is_used() -> None:
    cp, clock = ControlPlane(), Clock()
    directory = SiteAgentDirectory(cp.find, clock)
    asyncio.run(directory.find("shelf"))
    cp.reachable = False
    clock.now += 10 * FRESH_S
    assert asyncio.run(directory.find("shelf")) == (ServingAgent("a-2", "10.0.0.2:8080"),)
    assert asyncio.run(directory.find("never-asked")) == ()  # nothing known: nothing to use

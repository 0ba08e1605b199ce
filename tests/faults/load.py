"""Client load for the fault tests: lanes of back-to-back chat requests, every answer recorded.

A lane that gets anything but a 200 waits ``PAUSE_S`` before its next request, as a client
backing off would (it keeps an outage's stream of refusals to a readable size).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

PAUSE_S = 0.05


@dataclass(frozen=True)
class Answer:
    """One request as the client saw it (``status`` 0: no HTTP answer at all)."""

    gateway: str
    started: float  # monotonic
    ended: float
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    code: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Load:
    """``lanes`` clients sending non-streamed chat requests of ``words`` words round the
    ``gateways`` until ``stop``."""

    def __init__(self, gateways: Sequence[str], token: str, *, lanes: int = 8,
                 model: str = "echo", words: int = 4, timeout_s: float = 20) -> None:
        self.gateways = list(gateways)
        self.answers: list[Answer] = []
        self._token = token
        self._lanes = lanes
        self._model = model
        self._words = words
        self._timeout_s = timeout_s
        self._stopping = asyncio.Event()
        self._numbers = itertools.count()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"}
        limits = httpx.Limits(max_connections=self._lanes * len(self.gateways))
        async with httpx.AsyncClient(headers=headers, timeout=self._timeout_s,
                                     limits=limits) as client:
            await asyncio.gather(*(self._lane(client) for _ in range(self._lanes)))

    async def _lane(self, client: httpx.AsyncClient) -> None:
        while not self._stopping.is_set():
            number = next(self._numbers)
            answer = await self.ask(client, self.gateways[number % len(self.gateways)], number)
            self.answers.append(answer)
            if answer.status != 200:
                await asyncio.sleep(PAUSE_S)

    async def ask(self, client: httpx.AsyncClient, gateway: str, number: int) -> Answer:
        content = " ".join(f"r{number}w{word}" for word in range(self._words))
        body = {"model": self._model, "messages": [{"role": "user", "content": content}]}
        started = time.monotonic()
        try:
            response = await client.post(f"{gateway}/v1/chat/completions", json=body)
        except httpx.HTTPError as error:
            return Answer(gateway, started, time.monotonic(), 0, code=type(error).__name__)
        ended = time.monotonic()
        try:
            reply = response.json()
        except ValueError:
            return Answer(gateway, started, ended, response.status_code, code="not JSON")
        if response.status_code != 200:
            return Answer(gateway, started, ended, response.status_code,
                          code=reply.get("error", {}).get("code"))
        assert reply["choices"][0]["message"]["content"] == content, reply
        usage = reply["usage"]
        return Answer(gateway, started, ended, 200, usage["prompt_tokens"],
                      usage["completion_tokens"])

    def count(self, check: Callable[[Answer], bool]) -> int:
        return sum(1 for answer in self.answers if check(answer))

    async def until(self, check: Callable[[Answer], bool], count: int, what: str,
                    within_s: float = 20) -> None:
        """Until ``count`` answers pass ``check`` (fails the test after ``within_s``)."""
        give_up = time.monotonic() + within_s
        while self.count(check) < count:
            assert time.monotonic() < give_up, (
                f"not {count} {what} within {within_s:.0f} s: {self.summary()}")
            await asyncio.sleep(0.02)

    def summary(self, answers: Sequence[Answer] | None = None) -> str:
        """``N x status (code)`` of ``answers`` (default: all)."""
        counts: dict[str, int] = {}
        for answer in self.answers if answers is None else answers:
            label = str(answer.status) + (f" {answer.code}" if answer.code else "")
            counts[label] = counts.get(label, 0) + 1
        return ", ".join(f"{n} x {label}" for label, n in sorted(counts.items())) or "none"


@dataclass
class Stream:
    """A streamed chat answer as the client received it, filled while it arrives."""

    gateway: str
    deltas: list[str] = field(default_factory=list)
    usage: dict[str, int] | None = None
    done: bool = False  # ``data: [DONE]`` arrived
    status: int = 0
    error: str | None = None  # the transport's error, if the answer broke off

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    async def read(self, client: httpx.AsyncClient, model: str, content: str) -> None:
        body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": content}]}
        try:
            async with client.stream("POST", f"{self.gateway}/v1/chat/completions",
                                     json=body) as response:
                self.status = response.status_code
                async for line in response.aiter_lines():
                    self._line(line)
        except httpx.HTTPError as error:
            self.error = type(error).__name__

    def _line(self, line: str) -> None:
        if not line.startswith("data: "):
            return
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            self.done = True
            return
        event = json.loads(data)
        if event.get("usage"):
            self.usage = event["usage"]
        for choice in event.get("choices") or []:
            if choice["delta"].get("content"):
                self.deltas.append(choice["delta"]["content"])


async def until(check: Callable[[], bool], what: str, within_s: float = 20) -> None:
    """Poll ``check`` until it holds (fails the test after ``within_s``)."""
    give_up = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < give_up, f"not within {within_s:.0f} s: {what}"
        await asyncio.sleep(0.02)

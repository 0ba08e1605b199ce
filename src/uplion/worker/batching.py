"""Dynamic batching: the requests a worker holds for one model share engine calls.

An engine says which of its calls can take several requests' inputs at once
(``Engine.batchable``: embeddings, classification, tensors). ``wrap`` puts a ``BatchingEngine``
in front of it: each request still calls ``embed``, ``classify`` or ``infer`` with its own
inputs, and waits; the calls that wait together become one engine call, whose output is cut back
into each request's share (its vectors and its own token count, or its rows). Everything else
about a request (its reply, deadline, cancellation, usage) stays with the request.

A batch starts when ``max_batch_size`` requests wait, or ``max_batch_delay_ms`` after the first
of them arrived; at most ``concurrency`` batches run at once (a slot holds a batch), so a worker
holds up to ``concurrency x max_batch_size`` tasks. Tensor requests share a call only with
requests of the same inputs (names, datatypes, every dimension but the first) and outputs.

One bad input fails its own request, not its batch: requests are checked one by one before they
wait (``replies``), and if a batched call still fails, its requests run again one by one, so that
only the one at fault gets the error. A request cancelled while it waits leaves the batch; one
cancelled while its batch runs only stops waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from uplion.models import ModelSpec
from uplion.models.spec import Serves
from uplion.worker.engines import base

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_CALLS: dict[Serves, base.Batchable] = {
    "embedding": "embed", "classification": "classify", "tensor": "infer",
}

In = TypeVar("In")
Out = TypeVar("Out")
Tensors = dict[str, "np.ndarray"]


def batch_size(spec: ModelSpec, engine: base.Engine, serves: Serves) -> int:
    """How many requests one engine call carries for a model that serves ``serves``."""
    call = _CALLS.get(serves)
    return spec.max_batch_size if call is not None and call in engine.batchable() else 1


def wrap(spec: ModelSpec, engine: base.Engine) -> base.Engine:
    """``engine`` with its batchable calls batched as ``spec`` says (itself when none are, or
    when ``max_batch_size`` is 1)."""
    calls = engine.batchable() if spec.max_batch_size > 1 else frozenset()
    if not calls:
        return engine
    return BatchingEngine(engine, calls, Policy(
        spec.max_batch_size, spec.max_batch_delay_ms / 1000, asyncio.Semaphore(spec.concurrency)
    ))


@dataclass(frozen=True, slots=True)
class Policy:
    """When a batch starts (full, or ``max_delay_s`` after its first request arrived) and how
    many run at once (``slots``, shared by the engine's calls)."""

    max_size: int
    max_delay_s: float
    slots: asyncio.Semaphore


class BatchingEngine(base.Engine):
    """``engine`` whose ``calls`` are batched; every other call goes straight through."""

    def __init__(
        self, engine: base.Engine, calls: frozenset[base.Batchable], policy: Policy
    ) -> None:
        self.engine = engine
        self.info = engine.info
        self._embed = _Batcher("embed", _join_texts(engine.embed, _split_embeddings),
                               engine.embed, policy) if "embed" in calls else None
        self._classify = _Batcher("classify", _join_texts(engine.classify, _split_labels),
                                  engine.classify, policy) if "classify" in calls else None
        self._infer = _Batcher(
            "infer", self._infer_joined, lambda item: engine.infer(*item), policy
        ) if "infer" in calls else None

    def batchable(self) -> frozenset[base.Batchable]:
        return self.engine.batchable()

    def health(self) -> base.EngineHealth:
        return self.engine.health()

    def chat(
        self, messages: list[dict[str, Any]], params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        return self.engine.chat(messages, params)

    def complete(self, prompt: str, params: base.GenerationParams) -> AsyncIterator[base.TextDelta]:
        return self.engine.complete(prompt, params)

    async def embed(self, texts: list[str]) -> base.Embeddings:
        if self._embed is None:
            return await self.engine.embed(texts)
        return await self._embed.submit(None, texts)

    async def classify(self, texts: list[str]) -> base.Classification:
        if self._classify is None:
            return await self.engine.classify(texts)
        return await self._classify.submit(None, texts)

    async def infer(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        key = _tensor_key(inputs, outputs)
        if self._infer is None or key is None:
            return await self.engine.infer(inputs, outputs)
        return await self._infer.submit(key, (inputs, outputs))

    async def _infer_joined(self, items: list[tuple[Tensors, Sequence[str]]]) -> list[Tensors]:
        import numpy as np

        rows = [len(next(iter(inputs.values()))) for inputs, _ in items]
        joined = {name: np.concatenate([inputs[name] for inputs, _ in items])
                  for name in items[0][0]}
        produced = await self.engine.infer(joined, items[0][1])
        ends = np.cumsum(rows)[:-1]
        for name, array in produced.items():
            if np.ndim(array) == 0 or len(array) != sum(rows):
                raise _NotBatched(f"output {name!r} has no row per input row "
                                  f"(shape {np.shape(array)} for {sum(rows)} rows)")
        parts = {name: np.split(array, ends) for name, array in produced.items()}
        return [{name: parts[name][index] for name in produced} for index in range(len(items))]


def _tensor_key(inputs: Tensors, outputs: Sequence[str]) -> Hashable | None:
    """What requests must share to be joined: their inputs but for the row count, and their
    outputs; ``None`` for inputs that cannot be joined (no rows, or rows of different counts)."""
    shapes = [array.shape for array in inputs.values()]
    if not shapes or any(not shape for shape in shapes) or len({s[0] for s in shapes}) != 1:
        return None
    return (tuple(outputs),
            tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())))


class _NotBatched(Exception):
    """The engine's answer to a batch cannot be cut into each request's share."""


R = TypeVar("R", base.Embeddings, base.Classification)


def _join_texts(
    call: Callable[[list[str]], Awaitable[R]], split: Callable[[R, list[int]], list[R]]
) -> Callable[[list[list[str]]], Awaitable[list[R]]]:
    async def joined(items: list[list[str]]) -> list[R]:
        result = await call([text for texts in items for text in texts])
        return split(result, [len(texts) for texts in items])

    return joined


def _shares(counts: list[int], tokens: list[int] | None) -> list[tuple[int, int, list[int]]]:
    """Each request's (start, end) in the joined texts and its texts' token counts."""
    if tokens is None or len(tokens) != sum(counts):
        raise _NotBatched("the engine did not count each text's tokens (text_tokens)")
    shares, start = [], 0
    for count in counts:
        shares.append((start, start + count, tokens[start:start + count]))
        start += count
    return shares


def _split_embeddings(result: base.Embeddings, counts: list[int]) -> list[base.Embeddings]:
    return [base.Embeddings(result.vectors[start:end], sum(tokens), tokens)
            for start, end, tokens in _shares(counts, result.text_tokens)]


def _split_labels(result: base.Classification, counts: list[int]) -> list[base.Classification]:
    return [base.Classification(result.labels[start:end], sum(tokens), tokens)
            for start, end, tokens in _shares(counts, result.text_tokens)]


@dataclass(frozen=True, slots=True)
class _Waiter(Generic[In, Out]):
    key: Hashable
    item: In
    arrived: float
    future: asyncio.Future[Out]


class _Batcher(Generic[In, Out]):
    """The requests waiting for one engine call, and the loop that forms their batches."""

    def __init__(
        self, name: str, joined: Callable[[list[In]], Awaitable[list[Out]]],
        one: Callable[[In], Awaitable[Out]], policy: Policy,
    ) -> None:
        self.name = name
        self._joined = joined
        self._one = one
        self._policy = policy
        self._max_size = policy.max_size  # 1 once the engine's answers prove not joinable
        self._waiting: list[_Waiter[In, Out]] = []
        self._arrived = asyncio.Event()
        self._former: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, key: Hashable, item: In) -> Out:
        """The engine's answer to ``item``, computed with the items that wait with it."""
        loop = asyncio.get_running_loop()
        waiter: _Waiter[In, Out] = _Waiter(key, item, loop.time(), loop.create_future())
        waiter.future.add_done_callback(lambda _: self._arrived.set())  # a cancel, too
        self._waiting.append(waiter)
        self._arrived.set()
        if self._former is None or self._former.done():
            self._former = asyncio.create_task(self._form(), name=f"batch-{self.name}")
        return await waiter.future

    async def _form(self) -> None:
        """Start batches while requests wait: full ones at once, others after the delay."""
        loop = asyncio.get_running_loop()
        while True:
            self._waiting = [w for w in self._waiting if not w.future.done()]
            if not self._waiting:
                return
            first = self._waiting[0]
            while not first.future.done() and self._count(first.key) < self._max_size:
                remaining = first.arrived + self._policy.max_delay_s - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            if first.future.done():
                continue
            await self._policy.slots.acquire()  # the batch takes what arrived meanwhile, too
            batch = self._take(first.key)
            if not batch:
                self._policy.slots.release()
                continue
            running = asyncio.create_task(self._run(batch), name=f"batch-{self.name}-run")
            self._running.add(running)
            running.add_done_callback(self._running.discard)

    def _count(self, key: Hashable) -> int:
        return sum(1 for w in self._waiting if w.key == key and not w.future.done())

    def _take(self, key: Hashable) -> list[_Waiter[In, Out]]:
        batch: list[_Waiter[In, Out]] = []
        rest: list[_Waiter[In, Out]] = []
        for waiter in self._waiting:
            if waiter.future.done():
                continue
            if waiter.key == key and len(batch) < self._max_size:
                batch.append(waiter)
            else:
                rest.append(waiter)
        self._waiting = rest
        return batch

    async def _run(self, batch: list[_Waiter[In, Out]]) -> None:
        try:
            if len(batch) == 1:
                await self._run_one(batch[0])
                return
            try:
                results = await self._joined([waiter.item for waiter in batch])
            except (base.Unsupported, base.Unrecoverable) as error:  # the same for every item
                for waiter in batch:
                    _settle(waiter.future, error=error)
                return
            except _NotBatched as error:
                log.warning("%s requests cannot share engine calls (%s); they run one by one "
                            "from now on", self.name, error)
                self._max_size = 1
                await asyncio.gather(*(self._run_one(waiter) for waiter in batch))
                return
            except Exception as error:
                log.warning("a batch of %d %s requests failed (%s: %s); running them one by "
                            "one", len(batch), self.name, type(error).__name__, error)
                await asyncio.gather(*(self._run_one(waiter) for waiter in batch))
                return
            for waiter, result in zip(batch, results, strict=True):
                _settle(waiter.future, result=result)
        except asyncio.CancelledError:
            for waiter in batch:
                waiter.future.cancel()
            raise
        finally:
            self._policy.slots.release()

    async def _run_one(self, waiter: _Waiter[In, Out]) -> None:
        if waiter.future.done():  # its request stopped waiting
            return
        try:
            result = await self._one(waiter.item)
        except Exception as error:
            _settle(waiter.future, error=error)
        else:
            _settle(waiter.future, result=result)


def _settle(
    future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
) -> None:
    if future.done():  # its request stopped waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)

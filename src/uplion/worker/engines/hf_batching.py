"""Continuous batching of a causal LM's generations, as vLLM and text-generation-inference do:
the generations in flight decode together, one forward pass per token for the whole batch, and
requests join and leave the batch between any two steps.

The batch's KV cache is one ``DynamicCache`` with a row per request, right-aligned: a shorter row
is padded on the left and its padding masked out, and its position ids count its own tokens
only, so every row decodes as it would alone. Newcomers are prefilled together (padded the same
way) and their cache rows joined to the batch's; a row that finishes, or whose consumer went away
(cancelled, past its deadline), leaves before the next step (``index_select`` on the batch
dimension, and columns that only hold padding are cut). Each row keeps its own sampling settings,
random generator, stop strings, token limit and text decoder.

Everything runs on the model thread, in one loop the engine starts there: it tokenizes the
newcomers, admits those the KV cache budget holds (``hf_capacity``; the others wait, in the order
they came, for rows to leave), prefills them and steps the batch. A request that could not fit
even alone is refused with a 400.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from uplion.worker.engines import base, hf_capacity, hf_generation

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PREFILL_TOKENS = 4096
"""Padded prompt tokens prefilled in one forward pass at most (a longer prompt goes alone)."""


def batches(model: Any) -> bool:
    """Whether ``model``'s generations can be batched here: every layer of its cache is a plain
    growing one (not a sliding window, nor an encoder-decoder's)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if model.config.is_encoder_decoder:
        return False
    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class BatchGenerator(hf_generation.TextGenerator):
    """Generates for every request in one continuously batched decoding loop, which runs on
    ``model_thread`` (the engine's single-thread executor) from ``warm_up`` until ``close``."""

    def __init__(
        self,
        text_model: hf_generation.TextModel,
        model_thread: ThreadPoolExecutor,
        default_max_tokens: int,
        capacity: hf_capacity.Capacity,
    ) -> None:
        super().__init__(text_model, default_max_tokens)
        self._model_thread = model_thread
        self.capacity = capacity
        self._wake = threading.Condition()
        self._incoming: list[hf_generation.Job] = []
        self._closed = False
        self._loop: Future[None] | None = None
        self.rows = 0
        """Requests in the batch now (tests and benchmarks read it)."""
        self.idle = threading.Event()
        """Set while the loop holds no request (tests wait on it)."""

    @property
    def max_concurrency(self) -> int:
        return self.capacity.max_rows

    @property
    def context_length(self) -> int:
        return self.capacity.max_total_tokens

    def warm_up(self) -> None:
        """A short generation through the batch's code paths, then the loop starts."""
        job = hf_generation.Job(
            lambda tokenizer: list(tokenizer("Hello")["input_ids"]),
            base.GenerationParams(temperature=0, max_tokens=2), "prompt", threading.Event(),
            lambda _: None,
        )
        self._model_thread.submit(self._finish, [job]).result()
        self._loop = self._model_thread.submit(self._run)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _submit(self, job: hf_generation.Job) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the transformers engine was closed")
            self._incoming.append(job)
            self.idle.clear()
            self._wake.notify()

    def _run(self) -> None:
        state = _State()
        while True:
            with self._wake:
                while not (self._closed or self._incoming or state.busy):
                    self.idle.set()
                    self._wake.wait()
                if self._closed:  # the rows are dropped: their consumers are gone with the engine
                    self.rows = 0
                    self.idle.set()
                    return
                incoming, self._incoming = self._incoming, []
            self._tick(state, incoming)

    def _finish(self, jobs: list[hf_generation.Job]) -> None:
        """Generate for ``jobs`` until they are all answered (warm-up)."""
        state = _State()
        self._tick(state, jobs)
        while state.busy:
            self._tick(state, [])

    def _tick(self, state: _State, incoming: list[hf_generation.Job]) -> None:
        """Take in ``incoming``, admit what fits, prefill it and step the batch once."""
        for job in incoming:
            row = self._row(job)
            if row is not None:
                state.waiting.append(row)
        state.waiting = deque(row for row in state.waiting if not row.gone())
        try:
            if state.batch is not None:
                state.batch = state.batch.keep(not row.gone() for row in state.batch.rows)
            for group in self._admitted(state):
                state.batch = _Batch.join(state.batch, self._prefill(group))
            if state.batch is not None:
                state.batch = self._step(state.batch)
        except Exception as error:
            logger.exception("a batch of %d generations failed", len(state.joining))
            for row in state.joining:
                if not (row.gone() or row.answered):
                    row.job.emit(error)
            state.batch = None
        finally:
            state.joining = [] if state.batch is None else list(state.batch.rows)
            self.rows = len(state.joining)

    def _row(self, job: hf_generation.Job) -> _Row | None:
        """A new request tokenized and checked; ``None`` when it is answered already (refused,
        or asking for no tokens)."""
        text_model = self._text_model
        try:
            prompt = job.encode(text_model.tokenizer)
            limit = self._limit(len(prompt), job)
            self.capacity.check(len(prompt), len(prompt) + limit, job.param_name)
        except base.EngineError as error:
            job.emit(error)
            return None
        except Exception as error:
            logger.exception("a request could not be read")
            job.emit(error)
            return None
        output = hf_generation.TextOutput(text_model, job.params, len(prompt))
        if limit <= 0:
            job.emit(output.final())
            return None
        return _Row(job, prompt, limit, output, hf_generation.random_generator(job.params))

    def _admitted(self, state: _State) -> Iterable[list[_Row]]:
        """The waiting rows the budget holds now, first come first in, in prefill groups."""
        rows = list(state.batch.rows) if state.batch is not None else []
        longest = max((row.total for row in rows), default=0)
        group: list[_Row] = []
        while state.waiting:
            row = state.waiting[0]
            if not self.capacity.fits(len(rows) + 1, max(longest, row.total)):
                break
            state.waiting.popleft()
            rows.append(row)
            longest = max(longest, row.total)
            widest = max([len(row.prompt), *(len(r.prompt) for r in group)])
            if group and (len(group) + 1) * widest > PREFILL_TOKENS:
                yield group
                group = []
            group.append(row)
            state.joining.append(row)
            self.rows = len(state.joining)
        if group:
            yield group

    def _prefill(self, rows: list[_Row]) -> _Batch | None:
        """The prompts of ``rows`` through the model together, left-padded; their first
        tokens picked. The rows that go on, as a batch."""
        import torch
        from transformers import DynamicCache

        text_model = self._text_model
        width = max(len(row.prompt) for row in rows)
        pad = text_model.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=text_model.model.config)
        with torch.inference_mode():
            output = text_model.model(
                input_ids=ids.to(text_model.device),
                attention_mask=mask.to(text_model.device),
                position_ids=positions.to(text_model.device),
                past_key_values=cache,
                use_cache=True,
                **text_model.keep_last(),
            )
        for row in rows:
            row.length = len(row.prompt)
        batch = _Batch(rows, output.past_key_values, mask.to(text_model.device))
        return batch.keep(self._advance(rows, output.logits[:, -1]))

    def _step(self, batch: _Batch) -> _Batch | None:
        """One token for every row of ``batch``; the rows that go on."""
        import torch

        text_model = self._text_model
        device = text_model.device
        ids = torch.tensor([[row.next_token] for row in batch.rows], device=device)
        positions = torch.tensor([[row.length] for row in batch.rows], device=device)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        with torch.inference_mode():
            output = text_model.model(
                input_ids=ids,
                attention_mask=batch.mask,
                position_ids=positions,
                past_key_values=batch.cache,
                use_cache=True,
                **text_model.keep_last(),
            )
        batch.cache = output.past_key_values
        for row in batch.rows:
            row.length += 1
        return batch.keep(self._advance(batch.rows, output.logits[:, -1]))

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> list[bool]:
        """Each row's next token picked and its text sent; whether each row goes on."""
        going = []
        for row, row_logits in zip(rows, logits, strict=True):
            if row.gone():
                going.append(False)
                continue
            token = hf_generation.pick(row_logits, row.job.params, row.generator)
            safe, done = row.output.push(token)
            if safe:
                row.job.emit(base.TextDelta(text=safe))
            if done or row.output.produced >= row.limit:
                row.job.emit(row.output.final())
                row.answered = True
                going.append(False)
            else:
                row.next_token = token
                going.append(True)
        return going


@dataclass(slots=True)
class _Row:
    """One request in the batch."""

    job: hf_generation.Job
    prompt: list[int]
    limit: int
    output: hf_generation.TextOutput
    generator: torch.Generator
    next_token: int = 0
    length: int = 0
    """The row's tokens in the KV cache (its padding not counted)."""
    answered: bool = False

    @property
    def total(self) -> int:
        """The longest the row may grow: its prompt and all the tokens it may generate."""
        return len(self.prompt) + self.limit

    def gone(self) -> bool:
        """Whether the request's consumer went away."""
        return self.job.cancel.is_set()


@dataclass(slots=True)
class _Batch:
    """Rows decoding together: their KV cache, right-aligned, and its attention mask."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor
    """``[rows, columns]``: 1 where a cache column holds a token of the row, 0 for padding."""

    @staticmethod
    def join(first: _Batch | None, second: _Batch | None) -> _Batch | None:
        """Both batches as one, the shorter one's rows padded on the left."""
        if first is None or second is None:
            return first or second
        import torch

        width = max(first.mask.shape[1], second.mask.shape[1])
        for mine, theirs in zip(first.cache.layers, second.cache.layers, strict=True):
            mine.keys = torch.cat([_pad(mine.keys, width), _pad(theirs.keys, width)])
            mine.values = torch.cat([_pad(mine.values, width), _pad(theirs.values, width)])
        first.mask = torch.cat([_pad(first.mask, width), _pad(second.mask, width)])
        first.rows = first.rows + second.rows
        return first

    def keep(self, going: Iterable[bool]) -> _Batch | None:
        """The batch without the rows not ``going``, and without the columns left holding only
        padding; ``None`` when no row goes on."""
        import torch

        kept = [at for at, goes in enumerate(going) if goes]
        if not kept:
            return None
        if len(kept) < len(self.rows):
            index = torch.tensor(kept, device=self.mask.device)
            self.rows = [self.rows[at] for at in kept]
            self.mask = self.mask.index_select(0, index)
            for layer in self.cache.layers:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
        start = int(self.mask.any(dim=0).int().argmax())
        if start > 0:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
        return self


def _pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` padded with zeros on the left of its sequence dimension to ``width`` columns
    (the last dimension of a mask, the one before the last of keys and values)."""
    import torch.nn.functional as functional

    missing = width - tensor.shape[1 if tensor.dim() == 2 else -2]
    if missing == 0:
        return tensor
    return functional.pad(tensor, (missing, 0) if tensor.dim() == 2 else (0, 0, missing, 0))


@dataclass(slots=True)
class _State:
    """What the loop holds between steps."""

    batch: _Batch | None = None
    waiting: deque[_Row] = field(default_factory=deque)
    joining: list[_Row] = field(default_factory=list)
    """The rows a failed forward pass fails: those in the batch and those being prefilled."""

    @property
    def busy(self) -> bool:
        return self.batch is not None or bool(self.waiting)

"""Streamed text generation on a transformers model, causal or encoder-decoder.

Each request runs its decoding loop in a thread of its own, with its own KV cache and random
generator, and hands text deltas to the event loop as they are decoded. The model and tokenizer
are only ever called on one dedicated model thread: concurrent requests queue their steps there
and so advance token by token in turn (PyTorch's CPU thread pool is fastest when one thread keeps
driving it, and a Hugging Face tokenizer must not be used by two threads at once). A request
whose consumer goes away (``aclose`` or cancellation) stops before its next token; ``close``
stops them all.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from uplion import protocol
from uplion.worker.engines import base, hf_text

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

THREAD_PREFIX = "transformers-generate-"
"""Names of the per-request decoding threads (tests watch them end)."""

_thread_ids = itertools.count(1)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TextModel:
    """A loaded generative model and what decoding needs to know about it."""

    model: Any
    tokenizer: Any
    device: str
    end_ids: frozenset[int]
    context_length: int | None
    decoder_start: int | None
    """The decoder's first input for an encoder-decoder model; ``None`` for a causal LM."""
    keeps_logits: bool
    """Whether the model's forward takes ``logits_to_keep`` (a causal LM computes one row)."""


class Generator:
    """Runs the generations of one model; every model and tokenizer call goes to
    ``model_thread``, a single-thread executor the engine owns."""

    def __init__(
        self, text_model: TextModel, model_thread: ThreadPoolExecutor, default_max_tokens: int
    ) -> None:
        self._text_model = text_model
        self._model_thread = model_thread
        self._default_max_tokens = default_max_tokens
        self._running: set[threading.Event] = set()

    def warm_up(self) -> None:
        """One decoding step on the model thread: the first forward pass on a thread sets up
        PyTorch's thread pool, which should not happen in a request."""
        tokenizer = self._text_model.tokenizer
        prompt = self.on_model_thread(lambda: list(tokenizer("Hello")["input_ids"]))
        sequence = _new_sequence(self._text_model, prompt, base.GenerationParams(temperature=0))
        self.on_model_thread(sequence.step)

    def on_model_thread(self, call: Callable[[], _T]) -> _T:
        return self._model_thread.submit(call).result()

    def close(self) -> None:
        """Stop every running generation before its next token."""
        for cancel in list(self._running):
            cancel.set()

    async def stream(
        self,
        encode: Callable[[Any], list[int]],
        params: base.GenerationParams,
        param_name: str,
    ) -> AsyncIterator[base.TextDelta]:
        """Text deltas for the prompt ``encode(tokenizer)`` returns; the last one carries the
        finish reason and usage. ``param_name`` is the request field a too-long prompt came in."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[base.TextDelta | Exception] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: base.TextDelta | Exception) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                cancel.set()

        job = _Job(encode, params, param_name, cancel, emit)
        thread = threading.Thread(
            target=self._run, args=(job,), name=f"{THREAD_PREFIX}{next(_thread_ids)}", daemon=True
        )
        self._running.add(cancel)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            cancel.set()
            self._running.discard(cancel)

    def _run(self, job: _Job) -> None:
        try:
            self._generate(job)
        except base.EngineError as error:
            job.emit(error)
        except Exception as error:
            if job.cancel.is_set():  # the engine closed under it: nobody waits for an answer
                logger.debug("generation ended by close: %r", error)
                return
            logger.exception("generation failed")
            job.emit(error)

    def _generate(self, job: _Job) -> None:
        """One request's decoding loop; each model or tokenizer call runs on the model thread."""
        text_model, params = self._text_model, job.params
        prompt = self.on_model_thread(lambda: job.encode(text_model.tokenizer))
        room = _room(text_model, len(prompt), job.param_name)
        wanted = params.max_tokens if params.max_tokens is not None else self._default_max_tokens
        limit = wanted if room is None else min(wanted, room)
        sequence = _new_sequence(text_model, prompt, params)
        stops = hf_text.StopMatcher(params.stop)
        finish = "length"
        while sequence.produced < limit:
            if job.cancel.is_set():
                logger.debug("generation cancelled after %d tokens", sequence.produced)
                return
            ended, text = self.on_model_thread(sequence.step)
            if ended:
                finish = "stop"
                break
            safe, stopped = stops.push(text)
            if safe:
                job.emit(base.TextDelta(text=safe))
            if stopped:
                break
        tail = ""
        if not stops.stopped:
            tail, stopped = stops.push(self.on_model_thread(sequence.flush))
            if not stopped:
                tail += stops.flush()
        if stops.stopped:
            finish = "stop"
        usage = protocol.Usage(prompt_tokens=len(prompt), completion_tokens=sequence.produced)
        job.emit(base.TextDelta(text=tail, finish_reason=finish, usage=usage))


@dataclass(frozen=True, slots=True)
class _Job:
    encode: Callable[[Any], list[int]]
    params: base.GenerationParams
    param_name: str
    cancel: threading.Event
    emit: Callable[[base.TextDelta | Exception], None]


def _room(text_model: TextModel, prompt_tokens: int, param_name: str) -> int | None:
    """How many tokens may be generated after the prompt (``None``: no limit from the model);
    a 400 ``context_length_exceeded`` when the prompt does not fit."""
    context = text_model.context_length
    if context is None:
        return None
    encoder_decoder = text_model.decoder_start is not None
    room = context if encoder_decoder else context - prompt_tokens
    if prompt_tokens > context or room <= 0:
        raise base.EngineError(
            protocol.ErrorInfo(
                message=(
                    f"The {param_name} is {prompt_tokens} tokens long; this model's context is "
                    f"{context} tokens."
                ),
                type="invalid_request_error",
                code="context_length_exceeded",
                param=param_name,
                status=400,
            )
        )
    return room


class _Sequence(abc.ABC):
    """The decoding state of one request: KV cache, random generator, text decoded so far."""

    def __init__(
        self, text_model: TextModel, prompt: list[int], params: base.GenerationParams
    ) -> None:
        import torch

        self._text_model = text_model
        self._params = params
        self._inputs = self._start(torch.tensor([prompt], device=text_model.device))
        self._cache: Any = None
        self._generator = torch.Generator()  # sampling runs on the CPU: same seed, same text
        if params.seed is not None:
            self._generator.manual_seed(params.seed)
        else:
            self._generator.seed()
        self._decoder = hf_text.IncrementalDecoder(text_model.tokenizer)
        self.produced = 0

    def step(self) -> tuple[bool, str]:
        """Generate one token: whether it ends the text, and the text it completes."""
        import torch

        with torch.inference_mode():
            logits, self._cache = self._forward(self._inputs)
            token = _pick(logits, self._params, self._generator)
        self.produced += 1
        if token in self._text_model.end_ids:
            return True, ""
        self._inputs = torch.tensor([[token]], device=self._text_model.device)
        return False, self._decoder.push(token)

    def flush(self) -> str:
        return self._decoder.flush()

    @abc.abstractmethod
    def _start(self, prompt: torch.Tensor) -> torch.Tensor:
        """The first inputs of the decoding loop."""

    @abc.abstractmethod
    def _forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The next token's logits and the updated cache."""


class _CausalSequence(_Sequence):
    def _start(self, prompt: torch.Tensor) -> torch.Tensor:
        return prompt

    def _forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        keep = {"logits_to_keep": 1} if self._text_model.keeps_logits else {}
        output = self._text_model.model(
            input_ids=inputs, past_key_values=self._cache, use_cache=True, **keep
        )
        return output.logits[0, -1], output.past_key_values


class _EncoderDecoderSequence(_Sequence):
    """The prompt goes through the encoder once; the decoder starts from its start token."""

    def _start(self, prompt: torch.Tensor) -> torch.Tensor:
        import torch

        self._prompt: torch.Tensor | None = prompt
        self._encoded: Any = None
        return torch.tensor([[self._text_model.decoder_start]], device=prompt.device)

    def _forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        model = self._text_model.model
        if self._prompt is not None:
            self._encoded, self._prompt = model.get_encoder()(input_ids=self._prompt), None
        output = model(
            encoder_outputs=self._encoded,
            decoder_input_ids=inputs,
            past_key_values=self._cache,
            use_cache=True,
        )
        return output.logits[0, -1], output.past_key_values


def _new_sequence(
    text_model: TextModel, prompt: list[int], params: base.GenerationParams
) -> _Sequence:
    if text_model.decoder_start is None:
        return _CausalSequence(text_model, prompt, params)
    return _EncoderDecoderSequence(text_model, prompt, params)


def _pick(logits: torch.Tensor, params: base.GenerationParams, generator: torch.Generator) -> int:
    """The next token: greedy at temperature 0, else sampled from the top-p nucleus."""
    import torch

    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = (torch.cumsum(sorted_probs, dim=0) - sorted_probs) < params.top_p
    keep[0] = True
    choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)
    return int(order[choice])

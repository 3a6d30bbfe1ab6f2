"""Captions to token ids: a word-level tokenizer built from the data's vocabulary (no downloads)
and a small text encoder (embeddings + residual MLPs; the joint attention blocks do the mixing).

Tensor legend: ``B`` batch, ``S`` shots, ``T`` caption tokens per shot, ``C`` model width.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

PAD, NULL, UNK = "<pad>", "<null>", "<unk>"
SPECIALS = (PAD, NULL, UNK)


def split_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


class Tokenizer:
    """Word-level tokenizer. Id 0 is ``<pad>``, 1 is ``<null>`` (the dropped caption for
    classifier-free guidance), 2 is ``<unk>``; the rest are the vocabulary in the given order."""

    def __init__(self, words: Sequence[str]):
        words = [w for w in dict.fromkeys(words) if w not in SPECIALS]
        self.words = list(SPECIALS) + words
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Tokenizer:
        """A tokenizer whose vocabulary is every word of ``texts`` (sorted, so order-independent)."""
        return cls(sorted({w for t in texts for w in split_words(t)}))

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def null_id(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, length: int) -> list[int]:
        """``length`` ids: the caption's words, truncated or padded with ``<pad>``."""
        ids = [self.index.get(w, 2) for w in split_words(text)][:length]
        return ids + [0] * (length - len(ids))

    def encode_shots(self, captions: Sequence[str], length: int) -> torch.Tensor:
        """``(S, T)`` int64 ids, one row per shot's caption."""
        return torch.tensor([self.encode(c, length) for c in captions], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.words[i] for i in ids if i not in (0, 1))

    def null_like(self, ids: torch.Tensor) -> torch.Tensor:
        """The unconditional caption: ``<null>`` in every position."""
        return torch.full_like(ids, self.null_id)


class TextEncoder(nn.Module):
    """``(B, S, T)`` ids -> ``(B, S, T, C)`` features: token + in-caption position embeddings, then
    residual MLPs. Per-token only: context across words and shots comes from the joint blocks."""

    def __init__(self, vocab_size: int, dim: int, max_tokens: int, layers: int = 2):
        super().__init__()
        self.max_tokens = max_tokens
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(max_tokens, dim))
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(layers)
        )

    def forward(self, ids_bst: torch.Tensor) -> torch.Tensor:
        T = ids_bst.shape[-1]
        x = self.tok(ids_bst) + self.pos[:T]
        for mlp in self.mlps:
            x = x + mlp(x)
        return x

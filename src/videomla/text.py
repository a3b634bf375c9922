"""Text encoders: prompts -> [B, L, text_dim] features for the DiT's text embedding.

:class:`HashTextEncoder` is the small built-in encoder of the embedded default model: each
word maps to a fixed pseudo-random unit vector seeded by a stable hash of the word, and a prompt
is its sequence of word vectors (plus a position code), zero-padded to ``max_tokens``. It has no
weights to download; the DiT's ``text_embedding`` learns what the words mean. UMT5-XXL (real
scale) plugs in through the same ``encode`` method.
"""

from __future__ import annotations

import re
import zlib

import torch


class HashTextEncoder:
    def __init__(self, text_dim: int, max_tokens: int = 16):
        self.text_dim = text_dim
        self.max_tokens = max_tokens

    @staticmethod
    def words(prompt: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", prompt.lower())

    def word_vector(self, word: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
        v = torch.randn(self.text_dim, generator=g)
        return v / v.norm()

    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        out = torch.zeros(len(prompts), self.max_tokens, self.text_dim)
        for i, prompt in enumerate(prompts):
            words = self.words(prompt)
            if len(words) > self.max_tokens:
                raise ValueError(f"prompt has {len(words)} words; this encoder takes at most {self.max_tokens}")
            for j, word in enumerate(words):
                out[i, j] = self.word_vector(word) + 0.1 * self.word_vector(f"<pos{j}>")
        return out

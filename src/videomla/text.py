"""Text encoders: prompts -> [B, L, text_dim] features for the DiT's text embedding.

:class:`HashTextEncoder` is the small built-in encoder of the embedded default model: each
word maps to a fixed pseudo-random unit vector seeded by a stable hash of the word, and a prompt
is its sequence of word vectors (plus a position code), zero-padded to ``max_tokens``. It has no
weights to download; the DiT's ``text_embedding`` learns what the words mean. UMT5-XXL (real
scale, :class:`UMT5TextEncoder`) plugs in through the same ``encode`` method.

Wan's DiT has no text self-attention: what binds "red" to "circle" is the encoder (UMT5's
contextual features). Plain word vectors carry no such binding, so a hash encoder with
``context=c`` adds to each word the vector of the (2c+1)-word span centred on it (the hashing
trick of n-gram features): in "a large red circle and a small blue square" the token "red" also
carries the one vector of "large red circle".
"""

from __future__ import annotations

import re
import warnings
import zlib
from pathlib import Path
from typing import Any, Protocol

import torch


class TextEncoder(Protocol):
    text_dim: int
    max_tokens: int

    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        """Prompts -> features [B, max_tokens, text_dim], zero past each prompt's tokens."""


def check_context(context: object) -> int:
    """A hash encoder's ``context``: a whole number of neighbouring words on each side, >= 0."""
    if not isinstance(context, int) or isinstance(context, bool) or context < 0:
        raise ValueError(f"text_encoder context must be a whole number of words >= 0, got {context!r}")
    return context


class HashTextEncoder:
    def __init__(self, text_dim: int, max_tokens: int = 16, context: int = 0):
        self.text_dim = text_dim
        self.max_tokens = max_tokens
        self.context = check_context(context)

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
                if self.context:
                    span = " ".join(words[max(0, j - self.context) : j + self.context + 1])
                    out[i, j] += self.word_vector(f"<span>{span}")
        return out


class UMT5TextEncoder:
    """Wan2.1's text encoder: UMT5-XXL's encoder (``transformers.UMT5EncoderModel``), 512 tokens.

    As Wan does, prompts are tokenised to ``max_tokens`` and the features past each prompt's
    length are zeroed (the DiT's cross-attention sees zeros there, not pad-token features).
    """

    def __init__(self, encoder: Any, tokenizer: Any, max_tokens: int = 512):
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.text_dim = int(encoder.config.d_model)

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_tokens: int = 512,
    ) -> UMT5TextEncoder:
        """Load from a local folder: a Wan2.1 diffusers root (``text_encoder/`` + ``tokenizer/``) or
        one folder holding both the encoder's config.json + weights and the tokenizer files."""
        from .checkpoint import check_text_encoder_folder

        # config, weights and tokenizer checked here, so a broken folder is one named error, not transformers'
        enc_dir, tok_dir = check_text_encoder_folder(path)
        from transformers import AutoTokenizer, UMT5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        encoder = UMT5EncoderModel.from_pretrained(enc_dir, local_files_only=True, dtype=dtype)
        return cls(encoder.to(device), tokenizer, max_tokens)

    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_tokens,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        full = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        for prompt, ids in zip(prompts, full):
            if len(ids) > self.max_tokens:
                warnings.warn(
                    f"prompt {prompt[:40]!r}... has {len(ids)} tokens; the text encoder keeps the first "
                    f"{self.max_tokens} (as Wan does)",
                    stacklevel=2,
                )
        device = next(self.encoder.parameters()).device
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        with torch.no_grad():
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return (hidden * mask[..., None].to(hidden.dtype)).float()

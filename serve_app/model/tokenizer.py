"""Text tokenization for CSM turns: BOS + "[{speaker}]{text}" + EOS with the Llama-3 tokenizer.

This is the template of the original Sesame generator (a `TemplateProcessing` post-processor on
the Llama-3.2 tokenizer) and of transformers' CSM chat template. A byte-level tokenizer with the
same special tokens serves the offline `tiny-random` preset, and a hashed word-level tokenizer the
offline `csm-1b-random` preset (prompt lengths like Llama-3's on English text).
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_EOS_TOKEN = "<|audio_eos|>"


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer`, forcing the BOS/EOS template on every encoded turn."""

    def __init__(self, tokenizer: Tokenizer, bos_token: str = BOS_TOKEN, eos_token: str = EOS_TOKEN) -> None:
        bos_id, eos_id = tokenizer.token_to_id(bos_token), tokenizer.token_to_id(eos_token)
        if bos_id is None or eos_id is None:
            raise ValueError(f"tokenizer lacks {bos_token!r} or {eos_token!r}")
        tokenizer.post_processor = TemplateProcessing(
            single=f"{bos_token}:0 $A:0 {eos_token}:0",
            pair=f"{bos_token}:0 $A:0 {eos_token}:0 {bos_token}:1 $B:1 {eos_token}:1",
            special_tokens=[(bos_token, bos_id), (eos_token, eos_id)],
        )
        self._tok = tokenizer
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id, self.eos_id = bos_id, eos_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> Tokenizer:
        return self._tok

    def encode_turn(self, text: str, speaker: int) -> list[int]:
        """Token ids of one turn: BOS, "[speaker]text", EOS."""
        return self._tok.encode(f"[{speaker}]{text}").ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json` for the BOS/EOS names when present)."""
        path = Path(path)
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        cfg: dict[str, Any] = {}
        if (path / "tokenizer_config.json").exists():
            cfg = json.loads((path / "tokenizer_config.json").read_text())
        return cls(
            tok, _token_name(cfg.get("bos_token"), BOS_TOKEN), _token_name(cfg.get("eos_token"), EOS_TOKEN)
        )

    @classmethod
    def tiny(cls) -> TextTokenizer:
        """Byte-level tokenizer (256 byte tokens, no merges) + the Llama-3/CSM special tokens."""
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([BOS_TOKEN, EOS_TOKEN, AUDIO_TOKEN, AUDIO_EOS_TOKEN])
        return cls(tok)

    def save(self, path: str | Path) -> None:
        """Write `tokenizer.json` and a minimal `tokenizer_config.json` into directory `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path / "tokenizer.json"))
        (path / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "bos_token": self.bos_token,
                    "eos_token": self.eos_token,
                    "pad_token": self.eos_token,
                    "tokenizer_class": "PreTrainedTokenizerFast",
                },
                indent=2,
            )
        )


LLAMA3_BOS_ID = 128_000
LLAMA3_EOS_ID = 128_001


class HashedWordTokenizer:
    """Offline stand-in for the Llama-3 tokenizer: one id per word or punctuation mark, from a stable
    hash (CRC-32) of its text, wrapped in BOS/EOS like `TextTokenizer`.

    English text gets about as many tokens as Llama-3 gives it, so prompts, prefill and position
    budgets behave as with the real tokenizer; there is no vocabulary file to download. Ids are
    meaningless beyond that (the `csm-1b-random` preset's weights are random anyway)."""

    _WORDS = re.compile(r"\w+|[^\w\s]")

    def __init__(self, vocab_size: int = 128_256, bos_id: int | None = None, eos_id: int | None = None):
        """BOS/EOS default to Llama-3's ids, or to the last two ids of a smaller vocabulary."""
        fits = vocab_size > LLAMA3_EOS_ID
        bos_id = bos_id if bos_id is not None else LLAMA3_BOS_ID if fits else vocab_size - 2
        eos_id = eos_id if eos_id is not None else LLAMA3_EOS_ID if fits else vocab_size - 1
        if min(bos_id, eos_id) < 1 or max(bos_id, eos_id) >= vocab_size:
            raise ValueError("BOS/EOS ids must lie inside the vocabulary, above id 0")
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id = bos_id, eos_id
        self._word_ids = min(bos_id, eos_id)  # words hash below the special ids

    def encode_turn(self, text: str, speaker: int) -> list[int]:
        """Token ids of one turn: BOS, one id per word of "[speaker]text", EOS."""
        words = self._WORDS.findall(f"[{speaker}]{text}")
        return [self.bos_id, *(zlib.crc32(w.encode()) % self._word_ids for w in words), self.eos_id]


def _token_name(value: Any | None, default: str) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default

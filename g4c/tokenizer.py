"""Tokenizer built from a GGUF's own vocabulary, by the field's libraries, and the chat template.

- `tokenizer.ggml.model = "llama"` (Gemma 3: SentencePiece BPE, merge order by score): a
  SentencePiece ModelProto is assembled from tokens, scores and token types and run by the
  `sentencepiece` library.
- a BPE vocabulary with `tokenizer.ggml.merges` (Gemma 4): a `tokenizers` BPE model from
  vocab and merges, spaces normalized to U+2581 as Gemma's tokenizer.json does.

Special tokens (control and user-defined types) are matched in the text first, longest
first, and the pieces between them are encoded (llama.cpp's partition with parse_special).
The chat template is `tokenizer.chat_template`, rendered by jinja2 in a sandbox.
End-of-generation ids: eos, eot, and the turn-end markers the vocabulary has.
"""

from __future__ import annotations

import re
from functools import cached_property

from .errors import G4CError
from .model import Model

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# the Gemma texts llama.cpp's vocabulary loader also marks end of generation (llama-vocab.cpp)
EOG_TEXTS = ("<eos>", "<end_of_turn>", "<turn|>", "<|tool_response>")
# llama.cpp also stops at "</s>" (listed there for paddleocr); in Gemma's vocabulary it is the
# HTML strikethrough close tag (user-defined, id 212 in Gemma 3), so it is not an end here
LLAMACPP_ONLY_EOG = ("</s>",)
_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class Tokenizer:
    def __init__(self, model: Model):
        meta = model.metadata
        self.path = model.path

        def get(key, default=None):
            mv = meta.get(key)
            return mv.value if mv is not None else default

        self.kind = get("tokenizer.ggml.model")
        self.tokens: list[str] = get("tokenizer.ggml.tokens")
        if self.kind is None or self.tokens is None:
            raise G4CError(f"{model.path}: no tokenizer in the file (tokenizer.ggml.model / tokenizer.ggml.tokens)")
        n = len(self.tokens)
        self.types: list[int] = list(get("tokenizer.ggml.token_type", [NORMAL] * n))
        self.scores: list[float] = list(get("tokenizer.ggml.scores", [0.0] * n))
        self.merges: list[str] | None = get("tokenizer.ggml.merges")
        self.bos_id = get("tokenizer.ggml.bos_token_id")
        self.eos_id = get("tokenizer.ggml.eos_token_id")
        self.add_bos = bool(get("tokenizer.ggml.add_bos_token", True))
        self.add_space_prefix = bool(get("tokenizer.ggml.add_space_prefix", False))
        self.chat_template_source: str | None = get("tokenizer.chat_template")
        if len(self.types) != n or len(self.scores) != n:
            raise G4CError(f"{model.path}: tokenizer.ggml.token_type/scores do not have one entry per token ({n})")
        if self.kind == "llama":
            self._impl = _SentencePiece(self)
        elif self.merges is not None:
            self._impl = _Bpe(self)
        else:
            raise G4CError(f"{model.path}: tokenizer.ggml.model {self.kind!r} without tokenizer.ggml.merges is not supported")
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    # -- ids -------------------------------------------------------------------------------
    @cached_property
    def eog_ids(self) -> frozenset[int]:
        ids = {self.eos_id} if self.eos_id is not None else set()
        ids |= {self.ids[t] for t in EOG_TEXTS if t in self.ids}
        return frozenset(ids)

    @cached_property
    def _special_re(self):
        specials = [t for t, ty in zip(self.tokens, self.types) if ty in (CONTROL, USER_DEFINED) and t]
        specials.sort(key=len, reverse=True)
        return re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids as llama.cpp's llama_tokenize(text, add_special=add_bos, parse_special)."""
        out: list[int] = []
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            out.append(self.bos_id)
        parts = self._special_re.split(text) if (parse_special and self._special_re) else [text]
        for i, part in enumerate(parts):
            if i % 2 == 1:  # a special token's text
                out.append(self.ids[part])
            elif part:
                out.extend(self._impl.encode(part))
        return out

    def decode(self, ids) -> str:
        return self._impl.decode([int(i) for i in ids if self.types[int(i)] != CONTROL])

    def piece(self, i: int) -> str:
        return self.tokens[i]

    # -- chat ------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template_source:
            raise G4CError(f"{self.path}: no tokenizer.chat_template in the file")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise G4CError(f"{self.path}: chat template: {msg}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        bos = self.tokens[self.bos_id] if self.bos_id is not None else ""
        eos = self.tokens[self.eos_id] if self.eos_id is not None else ""
        return env.from_string(self.chat_template_source).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)


class _SentencePiece:
    """Gemma 3's vocabulary as a SentencePiece BPE model (scores order the merges)."""

    def __init__(self, tok: Tokenizer):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        m = pb.ModelProto()
        m.trainer_spec.model_type = pb.TrainerSpec.BPE
        m.trainer_spec.vocab_size = len(tok.tokens)
        m.trainer_spec.byte_fallback = any(ty == BYTE for ty in tok.types)
        m.trainer_spec.unk_id = tok.types.index(UNKNOWN) if UNKNOWN in tok.types else 0
        m.trainer_spec.bos_id = tok.bos_id if tok.bos_id is not None else -1
        m.trainer_spec.eos_id = tok.eos_id if tok.eos_id is not None else -1
        m.trainer_spec.pad_id = -1
        m.normalizer_spec.name = "identity"
        m.normalizer_spec.add_dummy_prefix = tok.add_space_prefix
        m.normalizer_spec.remove_extra_whitespaces = False
        m.normalizer_spec.escape_whitespaces = True
        types = {NORMAL: pb.ModelProto.SentencePiece.NORMAL, UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN,
                 CONTROL: pb.ModelProto.SentencePiece.CONTROL, USER_DEFINED: pb.ModelProto.SentencePiece.USER_DEFINED,
                 UNUSED: pb.ModelProto.SentencePiece.UNUSED, BYTE: pb.ModelProto.SentencePiece.BYTE}
        for t, s, ty in zip(tok.tokens, tok.scores, tok.types):
            p = m.pieces.add()
            p.piece, p.score, p.type = t, s, types.get(ty, pb.ModelProto.SentencePiece.NORMAL)
        self.sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


class _Bpe:
    """A merges-based BPE vocabulary (Gemma 4) through the `tokenizers` library."""

    def __init__(self, tok: Tokenizer):
        from tokenizers import Tokenizer as HfTokenizer
        from tokenizers import decoders, models, normalizers

        vocab = {t: i for i, t in enumerate(tok.tokens)}
        merges = [tuple(m.split(" ", 1)) for m in tok.merges]
        # a character the vocabulary cannot spell (no byte tokens) is dropped, as llama.cpp's BPE does
        bpe = models.BPE(vocab=vocab, merges=merges, unk_token=None, byte_fallback=any(ty == BYTE for ty in tok.types))
        self.hf = HfTokenizer(bpe)
        self.hf.normalizer = normalizers.Replace(" ", "\u2581")
        self.hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

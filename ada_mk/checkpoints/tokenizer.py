"""Tokenizers for real checkpoints: from an HF folder's tokenizer.json, or built from a GGUF
file's metadata (byte-level BPE, tokenizer.ggml.model = "gpt2"; SentencePiece BPE, "llama"). Encoding and decoding go through
the `tokenizers` package (pip install 'ada-mk[text]'); the chat template is rendered with jinja2.

    tok = Tokenizer.from_gguf_info(info)            # or Tokenizer.from_folder(path)
    ids = tok.encode(tok.apply_chat_template("Hi"))  # with --chat
    text = tok.decode(ids)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .errors import CheckpointError

# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) -> the split regex its merges were learned
# with; each is followed by a byte-level mapping. Absent names use GPT-2's own regex.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
           "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
# Pre-tokenizers that split every digit apart before GPT-2's regex (SmolLM's tokenizer.json:
# Digits(individual_digits=True) then ByteLevel).
_DIGIT_SPLIT = ("smollm", "starcoder", "refact")

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types
SPM_SPACE = "\u2581"  # SentencePiece's spelling of a space


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise CheckpointError("tokenizing needs the tokenizers package: pip install 'ada-mk[text]' (or tokenizers)") from None
    return tokenizers


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE spells tokens with it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _byte_level_bpe(tk: Any, info: Any) -> Any:
    """Byte-level BPE from the file's tokens and merges, split first as its pre-tokenizer name says."""
    if not info.merges:
        raise CheckpointError("GGUF tokenizer: tokenizer.ggml.merges is missing")
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    types = list(info.token_type or [1] * len(info.tokens))
    vocab = {}
    for i, t in enumerate(info.tokens):
        if types[i] not in (CONTROL, USER_DEFINED) and not set(t) <= alphabet:
            t = "".join(spelling[b] for b in t.encode("utf-8"))
        vocab.setdefault(t, i)
    merges = [tuple(m.split(" ", 1)) for m in info.merges]
    backend = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = info.pre or "default"
    byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _SPLITS)
    if pre in _SPLITS:
        backend.pre_tokenizer = tk.pre_tokenizers.Sequence(
            [tk.pre_tokenizers.Split(tk.Regex(_SPLITS[pre]), behavior="isolated"), byte_level])
    elif pre in _DIGIT_SPLIT:
        backend.pre_tokenizer = tk.pre_tokenizers.Sequence(
            [tk.pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = tk.decoders.ByteLevel()
    return backend


def sentencepiece_merges(tokens: list[str], priority: list[float]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies (GGUF stores none): every split of a token
    into two tokens of the vocabulary, the tokens of higher priority merged first (ties: the pieces'
    ids), so that BPE over them rebuilds the vocabulary's pieces."""
    ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        ids.setdefault(t, i)
    found = []
    for t, i in ids.items():
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in ids and b in ids:
                found.append((-priority[i], ids[a], ids[b], a, b))
    found.sort()
    return [(a, b) for *_, a, b in found]


def _sentencepiece_bpe(tk: Any, info: Any) -> Any:
    """SentencePiece BPE from the file's pieces: "▁" for a space, byte fallback (<0xNN> pieces) for
    what no piece spells, merges in score order (Gemma: in the file's order, which its merges were
    learned in; its runs of spaces are stored as spaces and spelled with "▁" here)."""
    tokens = list(info.tokens)
    gemma = info.architecture.startswith("gemma")
    if gemma:
        tokens = [t.replace(" ", SPM_SPACE) if " " in t and not t.strip() else t for t in tokens]
        priority = [-float(i) for i in range(len(tokens))]
    elif info.scores is not None and len(info.scores) == len(tokens):
        priority = [float(x) for x in info.scores]
    else:
        raise CheckpointError("GGUF tokenizer: tokenizer.ggml.scores is missing or of the wrong length "
                              "(a SentencePiece vocabulary needs one score per token)")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    unk = info.unknown_token_id
    bpe = tk.models.BPE(vocab=vocab, merges=sentencepiece_merges(tokens, priority), fuse_unk=True, byte_fallback=True,
                        unk_token=tokens[unk] if unk is not None and 0 <= unk < len(tokens) else None)
    backend = tk.Tokenizer(bpe)
    prefix = info.add_space_prefix and not gemma
    if gemma:
        backend.normalizer = tk.normalizers.Replace(" ", SPM_SPACE)
    else:
        backend.pre_tokenizer = tk.pre_tokenizers.Metaspace(replacement=SPM_SPACE,
                                                            prepend_scheme="first" if prefix else "never", split=False)
    steps = [tk.decoders.Replace(SPM_SPACE, " "), tk.decoders.ByteFallback(), tk.decoders.Fuse()]
    if prefix:
        steps.append(tk.decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = tk.decoders.Sequence(steps)
    return backend


def _raise_exception(msg: str) -> None:
    raise CheckpointError(f"chat template: {msg}")


class Tokenizer:
    """encode / decode / chat template over a `tokenizers.Tokenizer`."""

    def __init__(self, backend: Any, *, bos_token: str | None = None, eos_token: str | None = None,
                 eos_token_ids: Iterable[int] = (), add_bos: bool = False, chat_template: str | None = None) -> None:
        self.backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token else None
        self.eos_token_ids = sorted({int(i) for i in eos_token_ids if i is not None})
        self.add_bos = add_bos and self.bos_token_id is not None
        self.chat_template = chat_template

    # ---------------------------------------------------------------------------- building
    @classmethod
    def from_gguf_info(cls, info: Any) -> Tokenizer:
        """From tokenizer.ggml.*: byte-level BPE (model "gpt2": tokens, merges, token_type, pre) or
        SentencePiece BPE (model "llama": tokens, scores, token_type, add_space_prefix)."""
        tk = _tokenizers()
        if info.model == "gpt2":
            backend = _byte_level_bpe(tk, info)
        elif info.model == "llama":
            backend = _sentencepiece_bpe(tk, info)
        else:
            raise CheckpointError(f"GGUF tokenizer model {info.model!r} is unsupported; expected 'gpt2' (byte-level "
                                  "BPE) or 'llama' (SentencePiece)")
        types = list(info.token_type or [1] * len(info.tokens))
        specials = [tk.AddedToken(t, special=True, normalized=False)
                    for t, ty in zip(info.tokens, types) if ty == CONTROL]
        # user-defined tokens match whole in the text, as llama.cpp matches them; those the model
        # spells otherwise (Gemma's runs of spaces, "▁▁") come out of the merges instead
        user = [tk.AddedToken(t, special=False, normalized=False)
                for t, ty in zip(info.tokens, types) if ty == USER_DEFINED and backend.token_to_id(t) is not None]
        if specials:
            backend.add_special_tokens(specials)
        if user:
            backend.add_tokens(user)

        def tok(i):
            return info.tokens[i] if i is not None and 0 <= i < len(info.tokens) else None

        return cls(backend, bos_token=tok(info.bos_token_id), eos_token=tok(info.eos_token_id),
                   eos_token_ids=[info.eos_token_id, info.eot_token_id], add_bos=info.add_bos_token,
                   chat_template=info.chat_template)

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        """tokenizer.json (+ tokenizer_config.json and generation_config.json when present)."""
        tk = _tokenizers()
        folder = Path(folder)
        path = folder / "tokenizer.json"
        try:
            backend = tk.Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception types
            raise CheckpointError(f"{path}: cannot read the tokenizer: {e}") from None
        cfg = _read_json(folder / "tokenizer_config.json")
        gen = _read_json(folder / "generation_config.json")

        def token_str(v: Any) -> str | None:
            return v.get("content") if isinstance(v, dict) else v

        bos, eos = token_str(cfg.get("bos_token")), token_str(cfg.get("eos_token"))
        eos_ids = [backend.token_to_id(eos)] if eos else []
        g = gen.get("eos_token_id")
        eos_ids += g if isinstance(g, list) else [g]
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if template is None and (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        # add_bos: HF's post-processor already adds it when the tokenizer wants it.
        return cls(backend, bos_token=bos, eos_token=eos, eos_token_ids=eos_ids, add_bos=False,
                   chat_template=template)

    # ---------------------------------------------------------------------------- using
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in the text (e.g. <|im_start|>) stay whole.
        A BOS is prepended when the checkpoint asks for one (and the text has none)."""
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, prompt: str | list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat template rendered for one user message (or a list of messages)."""
        if not self.chat_template:
            raise CheckpointError("this checkpoint has no chat template")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise_exception
        env.filters.setdefault("tojson", lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw))
        try:
            return env.from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except jinja2.TemplateError as e:
            raise CheckpointError(f"chat template: {e}") from None

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Turns tokens into text as they come: `push(id)` returns the new text, holding back an
    incomplete UTF-8 sequence until the token that completes it arrives. Each push decodes a
    short window (the tokens since the last text went out, after those of the text before it,
    whose decoding is subtracted so that a tokenizer that strips a leading space still spaces
    right), so a long generation costs the same per token as a short one."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok, self.ids = tok, []
        self.prefix_at = self.read_at = 0  # window start; end of the tokens whose text went out

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        prefix = self.tok.decode(self.ids[self.prefix_at:self.read_at])
        text = self.tok.decode(self.ids[self.prefix_at:])
        if text.endswith("\ufffd") or len(text) <= len(prefix) or not text.startswith(prefix):
            return ""
        self.prefix_at, self.read_at = self.read_at, len(self.ids)
        return text[len(prefix):]

    def flush(self) -> str:
        """What push() still holds back (an unfinished UTF-8 sequence, decoded as replacement
        characters): the rest of the text once no token follows."""
        prefix = self.tok.decode(self.ids[self.prefix_at:self.read_at])
        text = self.tok.decode(self.ids[self.prefix_at:])
        self.prefix_at = self.read_at = len(self.ids)
        return text[len(prefix):] if text.startswith(prefix) else ""


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}

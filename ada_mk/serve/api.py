"""The OpenAI API's request fields and response objects, for /v1/completions and
/v1/chat/completions: requests are checked into (prompt token ids, Params), answers and stream
chunks are built as the `openai` client expects them. Bad input raises ApiError (HTTP 400, the
field named in `param`)."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from .scheduler import Params

MAX_STOPS = 4
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class ApiError(Exception):
    """An answer other than 200: status, message, OpenAI error type, offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass
class Parsed:
    chat: bool
    prompt: list[int]
    params: Params
    stream: bool
    include_usage: bool
    model: str


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ApiError(400, f"'{name}' must be a number in [{lo:g}, {hi:g}]; got {v!r}", name)
    return float(v)


def _integer(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ApiError(400, f"'{name}' must be an integer {rng}; got {v!r}", name)
    return v


def _stops(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop")
    return [s for s in stops if s]


def _message_text(m: Any, i: int) -> dict[str, str]:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise ApiError(400, f"messages[{i}] must be an object with a 'role' and a 'content'", "messages")
    c = m.get("content")
    if isinstance(c, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in c):
            raise ApiError(400, f"messages[{i}].content: only text parts are supported", "messages")
        c = "".join(p["text"] for p in c)
    if c is None:
        c = ""
    if not isinstance(c, str):
        raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", "messages")
    return {"role": m["role"], "content": c}


def parse(body: Any, chat: bool, tokenizer: Any, max_context: int, vocab_size: int, model_name: str) -> Parsed:
    """Check an OpenAI request body and tokenize its prompt (chat: through the chat template)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, f"'n' must be 1 (one completion per request); got {n!r}", "n")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "'best_of' is not supported", "best_of")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise ApiError(400, "'logprobs' is not supported", "logprobs")
    if body.get("echo"):
        raise ApiError(400, "'echo' is not supported", "echo")
    if body.get("tools") or body.get("functions"):
        raise ApiError(400, "tools and functions are not supported", "tools")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be true or false; got {stream!r}", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content}", "messages")
        try:
            text = tokenizer.apply_chat_template([_message_text(m, i) for i, m in enumerate(msgs)])
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - the template's own error, e.g. a role it refuses
            raise ApiError(400, f"messages: {' '.join(str(e).split())}", "messages") from None
        prompt = tokenizer.encode(text)
    else:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]
        if isinstance(p, str):
            prompt = tokenizer.encode(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            prompt = list(p)
        else:
            raise ApiError(400, "'prompt' must be a string, a list of one string, or a list of token ids", "prompt")
    if not prompt:
        raise ApiError(400, "the prompt encodes to no tokens", "messages" if chat else "prompt")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise ApiError(400, f"token ids must be in [0, {vocab_size}); got {bad[:5]}", "prompt")
    if len(prompt) >= max_context:
        raise ApiError(400, f"the prompt is {len(prompt)} tokens; this server's KV cache holds {max_context} "
                            "(prompt and generated tokens together)", "messages" if chat else "prompt")
    room = max_context - len(prompt)
    mt = _integer(body, "max_completion_tokens", 1) if chat else None
    mt = mt if mt is not None else _integer(body, "max_tokens", 1)
    if mt is None:
        mt = room if chat else min(DEFAULT_MAX_TOKENS, room)
    if mt > room:
        raise ApiError(400, f"the prompt ({len(prompt)} tokens) plus max_tokens ({mt}) exceed this server's KV cache "
                            f"({max_context} tokens); lower max_tokens to at most {room}", "max_tokens")
    seed = _integer(body, "seed", -(2 ** 63), 2 ** 64 - 1)
    params = Params(max_tokens=mt, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                    top_p=_number(body, "top_p", 1.0, 0.0, 1.0), stop=_stops(body),
                    seed=None if seed is None else seed % 2 ** 64,
                    ignore_eos=bool(body.get("ignore_eos", False)))
    if params.top_p == 0.0:
        params.temperature = 0.0  # the single most likely token
    return Parsed(chat, prompt, params, stream, bool(opts.get("include_usage")), str(body.get("model") or model_name))


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def response(p: Parsed, rid: str, text: str, finish: str, n_prompt: int, n_out: int) -> dict[str, Any]:
    """The whole answer of a non-streaming request."""
    base = {"id": rid, "created": int(time.time()), "model": p.model, "usage": usage(n_prompt, n_out)}
    if p.chat:
        return {**base, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}]}
    return {**base, "object": "text_completion", "choices": [
        {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def chunk(p: Parsed, rid: str, created: int, text: str | None, finish: str | None, *, first: bool = False) -> dict[str, Any]:
    """One server-sent event of a stream."""
    if p.chat:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": p.model, "choices": [choice]}
    choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
    return {"id": rid, "object": "text_completion", "created": created, "model": p.model, "choices": [choice]}


def usage_chunk(p: Parsed, rid: str, created: int, n_prompt: int, n_out: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk" if p.chat else "text_completion", "created": created,
            "model": p.model, "choices": [], "usage": usage(n_prompt, n_out)}


__all__ = ["ApiError", "Parsed", "chunk", "new_id", "parse", "response", "usage_chunk"]

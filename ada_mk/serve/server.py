"""The HTTP side of `adamk-serve`: the OpenAI API on the standard library's threading HTTP
server (HTTP/1.1, keep-alive), one thread per connection, the Scheduler's thread owning the
backend.

    server = OpenAIServer(backend, tokenizer, "smollm2-135m", port=8000)
    server.start()            # serves in background threads
    ...
    server.shutdown()         # drains: refuses new requests, finishes accepted ones, closes

Endpoints: POST /v1/completions and /v1/chat/completions (streamed as server-sent events with
chunked transfer encoding when "stream": true), GET /v1/models, /health, /metrics. A client that
goes away (a failed write, or its socket closed while it waits) cancels its request, which frees
the slot at the next step.
"""
from __future__ import annotations

import json
import queue
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import numpy as np

from ..runtime.slots import SlotBackend
from . import api
from .metrics import Metrics
from .scheduler import DEFAULT_PREFILL_CHUNK, Draining, QueueFull, Request, Scheduler

MAX_BODY = 16 << 20
POLL_S = 0.05  # how often a waiting handler checks that its client is still there


class OpenAIServer:
    def __init__(self, backend: SlotBackend, tokenizer: Any, model_name: str, *, host: str = "127.0.0.1",
                 port: int = 8000, max_queue: int = 64, prefills_per_step: int = 1,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, log: Any = None) -> None:
        self.backend, self.tokenizer, self.model_name = backend, tokenizer, model_name
        self.metrics = Metrics()
        self.scheduler = Scheduler(backend, tokenizer.eos_token_ids, max_queue=max_queue,
                                   prefills_per_step=prefills_per_step, prefill_chunk=prefill_chunk,
                                   metrics=self.metrics)
        self.log = log
        self.draining = False
        self.inflight = 0
        self.lock = threading.Lock()
        self.httpd = _HTTPServer((host, port), _Handler)
        self.httpd.app = self
        self.host, self.port = self.httpd.server_address[:2]
        self._serving = threading.Thread(target=self.httpd.serve_forever, name="adamk-http", daemon=True)
        self.created = int(time.time())

    def start(self) -> None:
        self.scheduler.start()
        self._serving.start()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting connections, finish every accepted request (their answers included),
        close the backend. True when everything finished within `timeout` seconds (otherwise
        the backend stays open: the scheduler may still be stepping)."""
        self.draining = True
        self.httpd.shutdown()
        self.httpd.server_close()
        t_end = None if timeout is None else time.monotonic() + timeout
        done = self.scheduler.drain(timeout)
        while True:  # the handlers write out what the scheduler finished
            with self.lock:
                if self.inflight == 0:
                    break
            if t_end is not None and time.monotonic() > t_end:
                done = False
                break
            time.sleep(0.01)
        if not self.scheduler.thread.is_alive():  # never free the device under a step still running
            self.backend.close()
        return done

    def _enter(self) -> None:
        with self.lock:
            self.inflight += 1

    def _leave(self) -> None:
        with self.lock:
            self.inflight -= 1


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: many clients connect at once (socketserver's 5 resets them)
    app: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is no error; anything else is one line on the log."""
        import sys

        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            return
        msg = f"error while serving {client_address[0]}:{client_address[1]}: {type(e).__name__}: {e}"
        (self.app.log or (lambda m: print(m, file=sys.stderr)))(" ".join(msg.split()))


def warm_up(backend: SlotBackend, prompt: list[int]) -> float:
    """One prefill in two chunks (the second attending over the first) and one step through
    every code path; seconds taken. Slot 0's cache is left with garbage that the next sequence
    there overwrites."""
    t = time.perf_counter()
    tokens, positions = backend.idle_inputs()
    if backend.bulk_prefill:
        half = max(1, len(prompt) // 2)
        backend.prefill(0, prompt[:half])
        if len(prompt) > half:
            backend.prefill_chunk(0, prompt[half:], half)
    backend.step(tokens, positions, True)
    backend.step(tokens, positions, False)
    return time.perf_counter() - t


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "adamk-serve"

    @property
    def app(self) -> OpenAIServer:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.app.log is not None:
            self.app.log(f"{self.address_string()} {format % args}")

    # ----------------------------------------------------------------------------- replies
    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._connection_header()
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, status: int, text: str, ctype: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self._connection_header()
        self.end_headers()
        self.wfile.write(data)

    def _connection_header(self) -> None:
        if self.app.draining:
            self.send_header("Connection", "close")
            self.close_connection = True

    def _error(self, e: api.ApiError) -> None:
        self.app.metrics.rejected_with(e.status)
        self._send_json(e.status, e.body())

    # ----------------------------------------------------------------------------- routes
    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        path = self.path.split("?", 1)[0]
        app = self.app
        if path == "/health":
            ok = not app.draining and app.scheduler.error is None
            self._send_json(200 if ok else 503, {"status": "ok" if ok else "unavailable"})
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": app.model_name, "object": "model", "created": app.created, "owned_by": "ada-mk"}]})
        elif path == "/metrics":
            self._send_text(200, app.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._error(api.ApiError(404, f"no such endpoint: GET {path}", kind="not_found_error"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        try:
            body = self._read_body()
            if path not in routes:
                raise api.ApiError(404, f"no such endpoint: POST {path}", kind="not_found_error")
            self._generate(body, routes[path])
        except api.ApiError as e:
            self._error(e)

    def _read_body(self) -> Any:
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise api.ApiError(400, "Content-Length must be an integer") from None
        if n > MAX_BODY:
            self.close_connection = True
            raise api.ApiError(413, f"request body of {n} bytes; at most {MAX_BODY}")
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise api.ApiError(400, f"the request body is not valid JSON: {e}") from None

    def _generate(self, body: Any, chat: bool) -> None:
        app = self.app
        b = app.backend
        p = api.parse(body, chat, app.tokenizer, b.max_context, b.vocab_size, app.model_name)
        req = Request(p.prompt, p.params, app.tokenizer.stream())
        app._enter()
        try:
            try:
                app.scheduler.submit(req)
            except QueueFull as e:
                raise api.ApiError(503, str(e), kind="server_error") from None
            except Draining as e:
                raise api.ApiError(503, str(e), kind="server_error") from None
            rid = api.new_id(chat)
            if p.stream:
                self._stream(p, req, rid)
            else:
                self._whole(p, req, rid)
        finally:
            app._leave()

    def _whole(self, p: api.Parsed, req: Request, rid: str) -> None:
        text, finish, error = [], None, None
        for kind, value in self._events(req):
            if kind == "text":
                text.append(value)
            elif kind == "done":
                finish = value
            else:
                error = value
        if finish is None and error is None:
            return  # the client went away
        if error is not None:
            raise api.ApiError(500, error, kind="server_error")
        self._send_json(200, api.response(p, rid, "".join(text), finish, len(req.prompt), len(req.out)))

    def _stream(self, p: api.Parsed, req: Request, rid: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._connection_header()
        self.end_headers()
        created = int(time.time())
        try:
            if p.chat:
                self._event(api.chunk(p, rid, created, "", None, first=True))
            ended = False
            for kind, value in self._events(req):
                ended = kind != "text"
                if kind == "text":
                    self._event(api.chunk(p, rid, created, value, None))
                elif kind == "done":
                    reason = "stop" if value == "stop" else "length"
                    self._event(api.chunk(p, rid, created, None if p.chat else "", reason))
                    if p.include_usage:
                        self._event(api.usage_chunk(p, rid, created, len(req.prompt), len(req.out)))
                else:
                    self._event({"error": {"message": value, "type": "server_error", "param": None, "code": None}})
            if not ended:
                return  # the client went away
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            req.cancel()
            self.close_connection = True

    def _event(self, obj: Any) -> None:
        self._write_chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _events(self, req: Request) -> Iterator[tuple[str, Any]]:
        """The request's events until done or error; cancels it when the client goes away. Text
        that queued up while this thread was writing goes out as one piece (one write, not one
        per token, when the handler falls behind the steps). The client is looked at every
        POLL_S seconds, whether or not events keep coming (a whole answer writes nothing until
        its end, so only the look notices a client that went away)."""
        checked = time.monotonic()
        while True:
            try:
                ev = req.events.get(timeout=POLL_S)
            except queue.Empty:
                ev = None
            if ev is None or time.monotonic() - checked >= POLL_S:
                checked = time.monotonic()
                if self._client_gone():
                    req.cancel()
                    self.close_connection = True
                    return
            if ev is None:
                continue
            last = None
            if ev[0] == "text":
                pieces = [ev[1]]
                while True:
                    try:
                        nxt = req.events.get_nowait()
                    except queue.Empty:
                        break
                    if nxt[0] != "text":
                        last = nxt
                        break
                    pieces.append(nxt[1])
                ev = ("text", "".join(pieces))
            for e in (ev, last):
                if e is None:
                    continue
                yield e
                if e[0] != "text":
                    return

    def _client_gone(self) -> bool:
        """The client closed its end (a readable socket with nothing to read)."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True


def ids_of_warmup(tokenizer: Any, vocab_size: int) -> list[int]:
    """A short prompt for warm_up: the tokenizer's encoding of a sentence, else a few ids."""
    try:
        ids = [t for t in tokenizer.encode("Warming up the MegaKernel.") if 0 <= t < vocab_size]
    except Exception:  # noqa: BLE001 - any tokenizer trouble: fall back to plain ids
        ids = []
    return ids or [int(i) for i in np.arange(1, 9) % vocab_size]


__all__ = ["OpenAIServer", "ids_of_warmup", "warm_up"]

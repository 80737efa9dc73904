"""A tiny OpenAI-compatible server on loopback that answers deterministically and injects faults on demand.

    with FaultServer(api_key="sk-test") as server:       # listens on 127.0.0.1, a free port
        backend = OpenAIBackend.create(None, base_url=server.url, model="stub")
        server.schedule("429", "truncate")               # the next two HTTP requests fail that way, then normal
        server.always = "503"                            # every request fails (until set back to None)
        server.kill_after = 5                            # after 5 requests, drop connections and stop listening
        server.stop(); server.restart()                  # refuse connections for a while, same port afterwards

`POST /v1/chat/completions` and `POST /v1/completions` answer `min(n, max_choices)` choices. Choice `i`'s text is
a function of the prompt, the seed and `i` only (`reply_text`), so a retried or resumed request gets exactly the
answer an undisturbed one gets; with more words than `max_tokens` it is cut and has finish_reason "length".

Faults (see `FAULTS`): "429" (with `Retry-After: 0`, or `retry_after` seconds), "500", "503", "400", "401",
"hang" (sleep `hang_seconds` before answering, past a client's timeout), "malformed" (200 with a body that is not
JSON), "no_choices" (200 with JSON without `choices`), "bad_choice" (a choice without its text), "truncate"
(Content-Length promises more than is sent, then the connection closes), "reset" (the connection closes before any
answer). Refused connections come from
`stop()` (or `kill_after`), which closes the listening socket.

Only the standard library; the handler threads are daemons, so a hung handler never blocks a test's exit.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "503", "400", "401", "hang", "malformed", "no_choices", "bad_choice", "truncate", "reset")


def reply_text(prompt, seed, index: int) -> str:
    """The deterministic text of choice `index` for a prompt (messages list or string) and seed."""
    digest = hashlib.sha256(json.dumps([prompt, seed, index], sort_keys=True).encode()).hexdigest()
    words = 3 + int(digest[:4], 16) % 18  # 3..20 words, so some answers exceed a small max_tokens
    return " ".join([f"r{digest[:8]}"] + [f"w{digest[8 + k % 50]}{k}" for k in range(words - 1)])


class _Handler(BaseHTTPRequestHandler):
    server_version = "FaultServer/1"
    stub: "FaultServer"  # set on a per-server subclass

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            return self._send_json(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})
        self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        stub = self.stub
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return self._send_json(400, {"error": {"message": "request body is not JSON"}})
        with stub.lock:
            if stub.killed:
                return  # the server is going down: close without an answer
            # Counted on arrival, under the lock: concurrent requests cannot all slip under the limit.
            if stub.kill_after is not None and stub.served >= stub.kill_after:
                stub.killed = True
                threading.Thread(target=stub.stop, daemon=True).start()
                return
            stub.served += 1
            stub.log.append({"path": self.path, "authorization": self.headers.get("Authorization"), "body": body})
            fault = stub.faults.popleft() if stub.faults else stub.always
            stub.in_flight += 1
            stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        try:
            self._answer(stub, body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before we answered
        finally:
            with stub.lock:
                stub.in_flight -= 1

    # -- answers ----------------------------------------------------------------------------------------------
    def _answer(self, stub: "FaultServer", body: dict, fault: str | None) -> None:
        if stub.api_key is not None:
            presented = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if presented != stub.api_key:
                # Like OpenAI, echo the key that was presented: the client must scrub it from its errors.
                return self._send_json(401, {"error": {"message": f"Incorrect API key provided: {presented}",
                                                       "type": "invalid_request_error"}})
        if fault == "429":
            return self._send_json(429, {"error": {"message": "Rate limit reached"}},
                                   {"Retry-After": str(stub.retry_after)})
        if fault in ("500", "503"):
            return self._send_json(int(fault), {"error": {"message": "server overloaded"}})
        if fault == "400":
            return self._send_json(400, {"error": {"message": "max_tokens is too large for this model"}})
        if fault == "401":
            return self._send_json(401, {"error": {"message": "Incorrect API key provided: sk-elsewhere"}})
        if fault == "reset":
            return  # nothing written: the connection closes, the client sees RemoteDisconnected
        if fault == "malformed":
            return self._send_raw(200, b'{"choices": [{"text": "unterminated')
        if fault == "no_choices":
            return self._send_json(200, {"object": "chat.completion", "error": None})
        if fault == "bad_choice":
            choice = {"index": 0, "finish_reason": "stop"}  # no `message` / `text`
            return self._send_json(200, {"object": "chat.completion", "choices": [choice]})
        if fault == "hang":
            time.sleep(stub.hang_seconds)
        if stub.delay is not None:
            time.sleep(stub.delay(body))
        payload = json.dumps(self._completion(stub, body)).encode()
        if fault == "truncate":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            return  # HTTP/1.0: the connection closes now, with half the promised body
        self._send_raw(200, payload)

    def _completion(self, stub: "FaultServer", body: dict) -> dict:
        chat = self.path.rstrip("/").endswith("/chat/completions")
        prompt = body.get("messages") if chat else body.get("prompt")
        n = int(body.get("n") or 1)
        if stub.max_choices is not None:
            n = min(n, stub.max_choices)
        max_tokens = int(body.get("max_tokens") or 16)
        choices, tokens = [], 0
        for i in range(n):
            words = reply_text(prompt, body.get("seed"), i).split()
            cut = len(words) > max_tokens
            words = words[:max_tokens]
            tokens += len(words)
            text = " ".join(words)
            choice = {"index": i, "finish_reason": "length" if cut else "stop"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": " " + text})
            choices.append(choice)
        answer = {"id": "stub", "object": "chat.completion" if chat else "text_completion",
                  "model": body.get("model"), "choices": choices}
        if stub.usage:
            answer["usage"] = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
        return answer

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        self._send_raw(status, json.dumps(obj).encode(), headers)

    def _send_raw(self, status: int, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out or disconnect are expected here


class FaultServer:
    """The stub server; see the module docstring. All settings may be changed while it runs."""

    def __init__(self, *, api_key: str | None = None, max_choices: int | None = None, usage: bool = True,
                 hang_seconds: float = 1.0, retry_after: float = 0, delay=None):
        self.api_key = api_key          # None: accept any or no Authorization header
        self.max_choices = max_choices  # answer at most this many choices, whatever n is (None: n)
        self.usage = usage              # include `usage` in answers
        self.hang_seconds = hang_seconds
        self.retry_after = retry_after  # the Retry-After header of a 429
        self.delay = delay              # optional body -> seconds to wait before a normal answer
        self.always: str | None = None  # fault applied to every request with no scheduled fault
        self.kill_after: int | None = None  # serve this many requests, then drop the next and stop listening
        self.faults: deque[str] = deque()
        self.log: list[dict] = []       # every request that reached the handler: path, authorization, body
        self.lock = threading.Lock()
        self._life = threading.Lock()   # serialises start/stop (stop may come from a handler's thread)
        self.served = 0
        self.killed = False
        self.in_flight = self.max_in_flight = 0
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def schedule(self, *faults: str) -> None:
        """The next len(faults) HTTP requests fail in this order (in arrival order, whichever request they are)."""
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
        with self.lock:
            self.faults.extend(faults)

    def start(self) -> "FaultServer":
        handler = type("Handler", (_Handler,), {"stub": self})
        with self._life:
            # allow_reuse_address (set by HTTPServer) lets restart() bind the same port again at once.
            self._server = _QuietServer(("127.0.0.1", self.port), handler)
            self.port = self._server.server_address[1]
            self.killed = False
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: new connections are refused until `restart()`."""
        with self._life:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def restart(self, *, kill_after: int | None = None) -> "FaultServer":
        """Listen again on the same port (after `stop()` or `kill_after`), with a fresh request count."""
        self.stop()
        with self.lock:
            self.kill_after, self.served = kill_after, 0
        return self.start()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

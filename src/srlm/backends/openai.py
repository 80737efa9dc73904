"""Generation through any OpenAI-compatible HTTP server: the model runs elsewhere, srlm only sends requests.

Works with every server that speaks the OpenAI `chat/completions` and `completions` endpoints, for example

- vLLM: `vllm serve MODEL --port 8000`, then `backend.base_url=http://127.0.0.1:8000/v1`;
- transformers: `transformers serve MODEL_DIR --port 8000` (needs `pip install "transformers[serving]"`; it answers
  one choice per request whatever `n` is, which this backend tops up, see below);
- llama.cpp: `llama-server -m model.gguf --port 8080` (base URL `http://127.0.0.1:8080/v1`);
- hosted APIs (OpenAI, Together, Fireworks, ...): their base URL, `backend.model_name` and the environment
  variable holding the key in `backend.api_key_env`.

Chat requests (`GenerationRequest.messages`) go to `POST {base_url}/chat/completions`, raw-text requests
(`GenerationRequest.text`, e.g. the Self-Instruct few-shot prompts) to `POST {base_url}/completions`; the chat
template is the server's. Each request asks for `n` = `sampling.n` choices with the request's temperature, top-p,
`max_tokens` = `max_new_tokens` and `seed` (servers that ignore the seed are fine, but then a resumed run does not
reproduce the text of an uninterrupted one). A server that returns fewer than `n` choices is asked again, with a
seed derived from the request's, until `n` are collected.

Requests run concurrently on a thread pool of `max_concurrency` workers; results come back in request order.
Connection errors, timeouts, HTTP 408/429/5xx and malformed bodies (not JSON, no `choices`) are retried with
exponential backoff and jitter, honouring `Retry-After`; any other 4xx fails at once. When the retries of one
request run out, `generate` raises `SrlmError` and the stage stops; since stages save finished chunks, rerunning
it once the server is back resumes where it stopped.

The API key is read once from the environment variable named by `api_key_env` and sent as
`Authorization: Bearer ...`; it is never logged, and is kept out of repr, stats and exception messages (it is even
scrubbed from error messages that the server echoes back). A key-less local server needs no variable set; note
that the key is sent to whatever `base_url` is configured, so for a local or third-party server set
`backend.api_key_env` to a variable meant for it (or null) rather than leave a real OpenAI key in OPENAI_API_KEY.

Expected-score judging (`judge.method=expected`) reads the judge's probabilities of the score digits through
`score_token_probs`: one-token requests with `top_logprobs`, continuing the judgement as a final assistant message
(vLLM's `continue_final_message`; see that method).

Token counts are approximate where the server does not give them, see `count_prompt_tokens` and `_num_tokens`.
Only the standard library is used, so this backend needs no extra.
"""

from __future__ import annotations

import email.utils
import http.client
import inspect
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from srlm.backends.base import CandidateProbs, Completion, GenerationRequest, GenerationStats
from srlm.errors import SrlmError
from srlm.io import stable_seed

# 408 (request timeout) and 429 (rate limit) are the client errors that a later identical request can cure.
RETRYABLE_STATUS = {408, 429}
# A server's Retry-After is honoured up to this many seconds: a misconfigured one should not stall a run for hours.
MAX_RETRY_AFTER_SECONDS = 300.0
# Characters per token of the prompt-length estimate: about right for English text with BPE vocabularies.
CHARS_PER_TOKEN = 4
# Top next tokens asked for when reading score-token probabilities: vLLM's default cap (max_logprobs) is 20.
SCORE_TOP_LOGPROBS = 20


class _Secret:
    """Holds the API key so that no repr, f-string or traceback-local dump can show it by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def scrub(self, text: str) -> str:
        """`text` with every occurrence of the key replaced (servers echo a wrong key in their 401 message)."""
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "<secret>" if self._value else "<no key>"

    __str__ = __repr__


class _RetryableError(Exception):
    """One failed attempt that another attempt may cure; `retry_after` is the server's wish, in seconds."""

    def __init__(self, description: str, retry_after: float | None = None):
        super().__init__(description)
        self.retry_after = retry_after


class _Aborted(Exception):
    """Another request of the same `generate` call failed for good: stop retrying this one."""


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        api_key_env: str | None = None,
        max_concurrency: int = 8,
        timeout_seconds: float = 60,
        max_retries: int = 5,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        max_n_per_request: int | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise SrlmError(f"openai backend: backend.base_url must be an http(s) URL such as "
                            f"http://127.0.0.1:8000/v1, got {base_url!r}")
        if not model:
            raise SrlmError("openai backend: backend.model_name is required (the model name the server expects)")
        if max_concurrency < 1 or max_retries < 0 or timeout_seconds <= 0:
            raise SrlmError("openai backend: max_concurrency must be >= 1, max_retries >= 0, timeout_seconds > 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._key = _Secret(api_key)
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout_seconds = float(timeout_seconds)
        self.max_retries = int(max_retries)
        self.backoff_seconds = float(backoff_seconds)
        self.max_backoff_seconds = float(max_backoff_seconds)
        # Some servers (llama.cpp) reject n > 1; this caps the choices asked per HTTP request (None: no cap).
        self.max_n_per_request = max_n_per_request
        self.stats = GenerationStats(extra={"http_requests": 0, "retries": 0, "top_up_requests": 0,
                                            "score_requests": 0})
        self._lock = threading.Lock()  # guards stats, updated from worker threads
        self._random = random.Random()  # jitter only: it never changes what is generated

    @classmethod
    def from_config(cls, model_path: str, backend, model, *, seed: int) -> "OpenAIBackend":
        """A client of the server at `backend.base_url`. The server decides which weights answer;
        `backend.model_name` names them, defaulting to `model_path`."""
        if not backend.base_url:
            raise SrlmError("backend.name=openai needs backend.base_url (e.g. http://127.0.0.1:8000/v1)")
        return cls.create(base_url=backend.base_url, model=backend.model_name or model_path,
                          api_key_env=backend.api_key_env, max_concurrency=backend.max_concurrency,
                          timeout_seconds=backend.timeout_seconds, max_retries=backend.max_retries)

    @classmethod
    def create(cls, loaded_model=None, *, base_url: str | None = None, model: str | None = None,
               model_name: str | None = None, api_key_env: str | None = "OPENAI_API_KEY", **options) -> "OpenAIBackend":
        """Build from config keys (`backend.base_url`, `backend.model_name`, ...). `loaded_model` is ignored: the
        model lives in the server. `model_name` is an alias of `model`. The key is read from `api_key_env`. Other
        options are `__init__`'s keywords (its defaults apply to those not given); options of other backends (such as
        `max_batch_tokens`) are ignored."""
        if base_url is None:
            raise SrlmError("openai backend: set backend.base_url, e.g. backend.base_url=http://127.0.0.1:8000/v1")
        api_key = os.environ.get(api_key_env) if api_key_env else None
        mine = inspect.signature(cls.__init__).parameters
        return cls(base_url, model or model_name, api_key, api_key_env=api_key_env,
                   **{key: value for key, value in options.items() if key in mine})

    def __repr__(self) -> str:
        key = f"key from ${self.api_key_env}" if self._key.reveal() else "no key"
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, {key})"

    # -- the interface ------------------------------------------------------------------------------------------
    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """An ESTIMATE (characters / 4): an OpenAI-compatible server does not tokenize for us.

        It is used only to skip prompts longer than `max_prompt_tokens`, so being off by a few tokens only moves
        that threshold a little; the chat template's own tokens are not counted.
        """
        if request.text is not None:
            chars = len(request.text)
        else:
            chars = sum(len(str(m.get("content") or "")) for m in request.messages)
        return math.ceil(chars / CHARS_PER_TOKEN)

    def generate(self, requests, on_done=None):
        """The `n` completions of each request, in request order, fetched `max_concurrency` at a time.

        `on_done(1)` is called from this (the calling) thread as each request finishes. If one request fails for
        good, the others are abandoned (queued ones cancelled, running ones stop at their next retry) and its
        `SrlmError` is raised.
        """
        start = time.perf_counter()
        results = self._map_concurrently(self._complete, requests, on_done)
        with self._lock:
            self.stats.seconds += time.perf_counter() - start
        return results

    def _map_concurrently(self, function, inputs: list, on_done=None) -> list:
        """[function(x, abort) for x in inputs], `max_concurrency` at a time, in input order. If one call fails
        for good, the others are abandoned (queued ones cancelled, running ones stop at their next retry) and its
        error is raised."""
        results: list = [None] * len(inputs)
        abort = threading.Event()
        if inputs:
            pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(inputs)),
                                      thread_name_prefix="srlm-openai")
            try:
                pending = {pool.submit(function, x, abort): i for i, x in enumerate(inputs)}
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = pending.pop(future)
                        results[index] = future.result()  # raises the call's SrlmError
                        if on_done:
                            on_done(1)
            finally:
                # On failure: stop the other workers quickly, and wait for them so none outlives this call.
                abort.set()
                pool.shutdown(wait=True, cancel_futures=True)
        return results

    def score_token_probs(self, items, candidates):
        """See `srlm.backends.base.ScoresNextTokens`: the server continues the text by ONE token, greedily, and
        reports the `top_logprobs` (`SCORE_TOP_LOGPROBS` of them) of that position.

        A chat request is sent to `chat/completions` with the continuation as a final assistant message that the
        server must continue rather than answer (`continue_final_message`, `add_generation_prompt: false`: vLLM's
        and SGLang's extension; a server without it refuses the request or answers a fresh turn, so use one that
        has it, such as `vllm serve`). A raw-text request goes to `completions` with the continuation appended to
        its prompt. The text sent ends without trailing whitespace, where most tokenizers write " 4" as one token;
        when the most likely next token is whitespace alone (tokenizers that write " ", "4"), it is asked again
        with the whitespace kept. Top tokens that equal a candidate once stripped count for it; candidates outside
        the top list get probability 0 before renormalising, and None comes back when none of them is listed.
        """
        candidates = list(candidates)
        start = time.perf_counter()
        results = self._map_concurrently(lambda item, abort: self._score_one(item, candidates, abort), list(items))
        with self._lock:
            self.stats.seconds += time.perf_counter() - start
        return results

    def _score_one(self, item, candidates: list[str], abort: threading.Event) -> CandidateProbs | None:
        request, continuation = item
        stripped = continuation.rstrip()
        texts = [stripped] + ([continuation] if stripped != continuation else [])
        for attempt, text in enumerate(texts):
            top = self._next_token_top_logprobs(request, text, abort)
            if attempt + 1 < len(texts) and top and not max(top, key=lambda t: t[1])[0].strip():
                continue  # the space is its own token for this tokenizer: the digit comes one token later
            break
        found = [0.0] * len(candidates)
        for token, logprob in top:
            if token.strip() in candidates and math.isfinite(logprob):
                found[candidates.index(token.strip())] += math.exp(logprob)
        mass = sum(found)
        if mass <= 0:
            return None
        return CandidateProbs([p / mass for p in found], mass)

    def _next_token_top_logprobs(self, request: GenerationRequest, text: str, abort) -> list[tuple[str, float]]:
        """(token, logprob) of the top next tokens after the request's prompt continued by `text`."""
        chat = request.messages is not None
        body = {"model": self.model, "n": 1, "temperature": 0.0, "max_tokens": 1, "seed": request.seed}
        if chat:
            url = f"{self.base_url}/chat/completions"
            body.update(messages=[*request.messages, {"role": "assistant", "content": text}],
                        continue_final_message=True, add_generation_prompt=False,
                        logprobs=True, top_logprobs=SCORE_TOP_LOGPROBS)
        else:
            url = f"{self.base_url}/completions"
            body.update(prompt=request.text + text, logprobs=SCORE_TOP_LOGPROBS)
        hint = ("judge.method=expected on the openai backend needs a server that returns top_logprobs and "
                "continues a final assistant message (continue_final_message), such as vLLM")
        try:
            data = self._post_with_retries(url, body, chat, request.request_id, abort)
        except SrlmError as exc:
            raise SrlmError(f"{exc} ({hint})") from None
        with self._lock:
            self.stats.extra["score_requests"] += 1
        logprobs = data["choices"][0].get("logprobs")
        try:
            if chat:
                first = logprobs["content"][0]
                return [(t["token"], float(t["logprob"])) for t in first["top_logprobs"]]
            return [(token, float(lp)) for token, lp in logprobs["top_logprobs"][0].items()]
        except (TypeError, KeyError, IndexError, ValueError, AttributeError):
            raise SrlmError(f"openai backend: POST {url} for request '{request.request_id}' answered without "
                            f"top log-probabilities ({hint})") from None

    def close(self) -> None:
        pass  # nothing held between calls: each generate() has its own pool, each HTTP request its own connection

    # -- one request --------------------------------------------------------------------------------------------
    def _complete(self, request: GenerationRequest, abort: threading.Event) -> list[Completion]:
        """All `n` completions of one request, asking again while the server returns fewer choices than asked."""
        sampling = request.sampling
        chat = request.messages is not None
        url = f"{self.base_url}/chat/completions" if chat else f"{self.base_url}/completions"
        completions: list[Completion] = []
        while len(completions) < sampling.n:
            want = sampling.n - len(completions)
            if self.max_n_per_request:
                want = min(want, self.max_n_per_request)
            # The first call uses the request's seed; a top-up call needs another seed (a seed-honouring server
            # would otherwise repeat the samples it already gave), derived so that a rerun asks the same.
            seed = request.seed if not completions else stable_seed(request.seed, "top-up", len(completions))
            body = {
                "model": self.model,
                "n": want,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_new_tokens,
                "seed": seed,
            }
            if chat:
                body["messages"] = request.messages
            else:
                body["prompt"] = request.text
            data = self._post_with_retries(url, body, chat, request.request_id, abort)
            choices = data["choices"][:want]
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            texts = [self._choice_text(choice, chat) for choice in choices]
            counts = _num_tokens(texts, usage.get("completion_tokens"))
            for choice, text, tokens in zip(choices, texts, counts):
                reason = "length" if choice.get("finish_reason") == "length" else "stop"
                completions.append(Completion(text.strip(), tokens, reason))
            with self._lock:
                if len(completions) < sampling.n:
                    self.stats.extra["top_up_requests"] += 1
                self.stats.sequences += len(choices)
                self.stats.new_tokens += sum(counts)
                prompt_tokens = usage.get("prompt_tokens")
                self.stats.prompt_tokens += (
                    prompt_tokens if isinstance(prompt_tokens, int) else self.count_prompt_tokens(request)
                )
        return completions

    @staticmethod
    def _choice_text(choice: dict, chat: bool) -> str:
        if chat:
            # `content` is null when a model answers only with a tool call or only with reasoning: an empty reply.
            return choice["message"].get("content") or ""
        return choice["text"]

    def _post_with_retries(self, url: str, body: dict, chat: bool, request_id: str, abort: threading.Event) -> dict:
        """The parsed JSON answer to `POST url`, its `choices` well-formed (see `_post_once`); retried as documented."""
        payload = json.dumps(body).encode("utf-8")
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if abort.is_set():
                raise _Aborted()
            try:
                return self._post_once(url, payload, chat)
            except _RetryableError as exc:
                last = exc
            if attempt < attempts - 1:
                with self._lock:
                    self.stats.extra["retries"] += 1
                delay = self._backoff(attempt, last.retry_after)
                if abort.wait(delay):  # sleeps, but wakes at once if the whole call is being abandoned
                    raise _Aborted()
        raise SrlmError(
            f"openai backend: POST {url} for request '{request_id}' failed {attempts} times "
            f"(1 try + max_retries={self.max_retries}); last error: {last}. "
            f"Is the server at {self.base_url} up? Rerunning the stage resumes where it stopped."
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry `attempt + 1`: the server's Retry-After if given, else exponential
        backoff with jitter (50-100% of base * 2^attempt, capped) so that many workers do not retry in lockstep."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER_SECONDS)
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * (2 ** attempt))
        return ceiling * self._random.uniform(0.5, 1.0)

    def _post_once(self, url: str, payload: bytes, chat: bool) -> dict:
        """One HTTP attempt. Raises `_RetryableError` for what a retry may cure, `SrlmError` for what it cannot.

        A 2xx answer counts as malformed (and is retried) unless it is JSON with a non-empty `choices` list whose
        entries carry a `message` object (chat) or a `text` field (raw completion).
        """
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key.reveal()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        http_request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
        with self._lock:
            self.stats.extra["http_requests"] += 1
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout_seconds) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:  # a status >= 400 (urllib follows redirects itself)
            message = self._key.scrub(_error_message(exc))
            if exc.code in RETRYABLE_STATUS or exc.code >= 500:
                raise _RetryableError(f"HTTP {exc.code}: {message}", _retry_after(exc.headers)) from None
            raise SrlmError(
                f"openai backend: POST {url} was refused with HTTP {exc.code}: {message}"
                + (" (check the API key in the environment variable "
                   f"{self.api_key_env})" if exc.code in (401, 403) else "")
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # Refused or reset connection, timeout (TimeoutError is an OSError), a body cut short (IncompleteRead),
            # a connection closed before any answer (RemoteDisconnected).
            reason = getattr(exc, "reason", None) or exc
            raise _RetryableError(f"{type(reason).__name__}: {self._key.scrub(str(reason))}") from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _RetryableError(f"malformed JSON body ({len(raw)} bytes): {self._key.scrub(_head(raw))}") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        field, kind = ("message", dict) if chat else ("text", str)
        if not isinstance(choices, list) or not choices or not all(
            isinstance(c, dict) and isinstance(c.get(field), kind) for c in choices
        ):
            raise _RetryableError(f"answer without well-formed choices: {self._key.scrub(_head(raw))}")
        return data


# -- helpers -------------------------------------------------------------------------------------------------------
def _num_tokens(texts: list[str], completion_tokens) -> list[int]:
    """Tokens of each choice. `usage.completion_tokens` counts all choices of one answer together, so it is split
    over them in proportion to their lengths in characters (exact when there is one choice; the total is kept
    exactly by largest-remainder rounding). Without usage, the whitespace word count of each text, which
    undercounts BPE tokens by roughly a third but is the best a server-agnostic client can do."""
    if not isinstance(completion_tokens, int) or completion_tokens < 0:
        return [len(text.split()) for text in texts]
    if len(texts) == 1:
        return [completion_tokens]
    weights = [len(text) for text in texts]
    total = sum(weights)
    if total == 0:
        weights, total = [1] * len(texts), len(texts)
    shares = [completion_tokens * w / total for w in weights]
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(texts)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: completion_tokens - sum(counts)]:
        counts[i] += 1
    return counts


def _retry_after(headers) -> float | None:
    """`Retry-After` in seconds: either a number (fractions accepted) or an HTTP date."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's own error message: OpenAI's `{"error": {"message": ...}}`, FastAPI's `{"detail": ...}`,
    or the first characters of the body."""
    try:
        raw = exc.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)[:500]
    return _head(raw) or (exc.reason or "no message")


def _head(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."

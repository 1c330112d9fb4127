"""A small client for OpenAI-compatible endpoints (stdlib only), for judges, critics and attackers.

Works against ``superalign serve``, vLLM, llama.cpp's server and hosted APIs::

    client = OpenAIClient("http://127.0.0.1:8000")
    client.complete(["2 + 2 ="], max_tokens=4, temperature=0)[0].text
    client.chat([{"role": "user", "content": "Hi"}]).text
    client.next_token_logprobs("Is the answer correct? Answer yes or no:", top=20)

Connection resets, HTTP 429 and 5xx answers are retried a few times with exponential
backoff; anything else fails at once with :class:`BackendError` carrying the server's message.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, NamedTuple

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class Completion(NamedTuple):
    """One completion; the log-prob fields are empty unless log-probs were asked for."""

    text: str
    tokens: list[str]
    """Every generated token, as text (may include an EOS token that ``text`` leaves out)."""
    token_logprobs: list[float]
    """log p(token | prefix) per token, as the server reports it."""
    top_logprobs: list[dict[str, float]]
    """Per token, the most likely alternatives ``{token: logprob}``."""
    finish_reason: str | None
    """``stop`` (EOS or a stop string), ``length`` (``max_tokens`` reached), or the server's."""


class BackendError(RuntimeError):
    """The endpoint could not be reached or answered with an error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
        """The HTTP status, when the server answered."""


class OpenAIClient:
    """Client of an OpenAI-compatible server at ``base_url``.

    ``base_url`` may end in ``/v1`` or not (a bare ``http://host:port`` gets ``/v1``). ``model``
    defaults to the first model the server lists; ``api_key`` to ``$OPENAI_API_KEY``.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
    ):
        url = base_url.rstrip("/")
        if urllib.parse.urlparse(url).path in ("", "/"):
            url += "/v1"
        self.base_url = url
        self._model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    @property
    def model(self) -> str:
        """The model named in requests (asked of the server once when not given)."""
        if self._model is None:
            names = self.models()
            if not names:
                raise BackendError(f"{self.base_url}/models lists no models; pass model=...")
            self._model = names[0]
        return self._model

    def models(self) -> list[str]:
        """Ids of the models the server offers."""
        return [m["id"] for m in self._request("GET", "/models").get("data", [])]

    def complete(
        self,
        prompts: str | list[str],
        *,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: str | list[str] | None = None,
        logprobs: int | None = None,
        seed: int | None = None,
    ) -> list[Completion]:
        """One completion per prompt (``/completions``); ``logprobs=k`` asks for top-k per token."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        body = self._sampling(max_tokens, temperature, top_p, stop, seed)
        body["prompt"] = prompts
        if logprobs is not None:
            body["logprobs"] = logprobs
        choices = sorted(
            self._request("POST", "/completions", body)["choices"], key=lambda c: c["index"]
        )
        return [_from_legacy(c) for c in choices]

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: str | list[str] | None = None,
        logprobs: int | None = None,
        seed: int | None = None,
    ) -> Completion:
        """The assistant's reply to ``messages`` (``/chat/completions``); ``logprobs=k`` as above."""
        body = self._sampling(max_tokens, temperature, top_p, stop, seed)
        body["messages"] = messages
        if logprobs is not None:
            body.update(logprobs=True, top_logprobs=logprobs)
        return _from_chat(self._request("POST", "/chat/completions", body)["choices"][0])

    def next_token_logprobs(self, prompt: str, top: int = 20) -> dict[str, float]:
        """``{token: log p}`` of the ``top`` likeliest next tokens after ``prompt``.

        What an LLM judge needs for P(yes): sum the probabilities of the "yes" spellings.
        """
        completion = self.complete([prompt], max_tokens=1, temperature=0.0, logprobs=top)[0]
        if not completion.top_logprobs:
            raise BackendError(f"{self.base_url} returned no log-probs for the next token")
        return dict(completion.top_logprobs[0])

    # --- transport ------------------------------------------------------------------------------

    def _sampling(self, max_tokens, temperature, top_p, stop, seed) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if top_p != 1.0:
            body["top_p"] = top_p
        if stop is not None:
            body["stop"] = stop
        if seed is not None:
            body["seed"] = seed
        return body

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send one request, retrying resets, 429 and 5xx; the decoded JSON answer."""
        url = self.base_url + path
        for attempt in range(self.retries + 1):
            try:
                return self._send(method, url, body)
            except urllib.error.HTTPError as e:
                message = _server_message(e)
                if e.code not in RETRY_STATUS or attempt == self.retries:
                    raise BackendError(
                        f"{method} {url} answered HTTP {e.code}: {message}", e.code
                    ) from None
                time.sleep(_retry_after(e, self.backoff * 2**attempt))
            except urllib.error.URLError as e:
                if isinstance(e.reason, ConnectionRefusedError):
                    raise BackendError(_refused_message(url)) from None
                if isinstance(e.reason, TimeoutError):
                    raise BackendError(f"no answer from {url} within {self.timeout} s") from None
                if not _transient(e.reason) or attempt == self.retries:
                    raise BackendError(f"cannot reach {url}: {e.reason}") from None
                time.sleep(self.backoff * 2**attempt)
            except TimeoutError:  # socket.timeout is an alias of it
                raise BackendError(f"no answer from {url} within {self.timeout} s") from None
            except (ConnectionError, http.client.HTTPException) as e:
                if isinstance(e, ConnectionRefusedError):
                    raise BackendError(_refused_message(url)) from None
                if attempt == self.retries:
                    raise BackendError(f"{method} {url} failed: {type(e).__name__}: {e}") from None
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except ValueError:
            raise BackendError(
                f"{method} {url} answered with something other than JSON: {raw[:200]!r}"
            ) from None


# --- response parsing -----------------------------------------------------------------------------


def _from_legacy(choice: dict[str, Any]) -> Completion:
    lp = choice.get("logprobs") or {}
    return Completion(
        text=choice.get("text", ""),
        tokens=list(lp.get("tokens") or []),
        token_logprobs=list(lp.get("token_logprobs") or []),
        top_logprobs=[dict(d or {}) for d in lp.get("top_logprobs") or []],
        finish_reason=choice.get("finish_reason"),
    )


def _from_chat(choice: dict[str, Any]) -> Completion:
    content = (choice.get("logprobs") or {}).get("content") or []
    return Completion(
        text=(choice.get("message") or {}).get("content") or "",
        tokens=[c["token"] for c in content],
        token_logprobs=[c["logprob"] for c in content],
        top_logprobs=[
            {t["token"]: t["logprob"] for t in c.get("top_logprobs") or []} for c in content
        ],
        finish_reason=choice.get("finish_reason"),
    )


def _server_message(e: urllib.error.HTTPError) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the raw body."""
    try:
        raw = e.read().decode(errors="replace")
    except OSError:
        return e.reason or ""
    try:
        error = json.loads(raw).get("error")
        return error.get("message", raw) if isinstance(error, dict) else str(error or raw)
    except (ValueError, AttributeError):
        return raw.strip()[:500] or str(e.reason)


def _retry_after(e: urllib.error.HTTPError, default: float) -> float:
    try:
        return min(float(e.headers.get("Retry-After", default)), 30.0)
    except (TypeError, ValueError):
        return default


def _transient(reason: Any) -> bool:
    return isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError))


def _refused_message(url: str) -> str:
    port = urllib.parse.urlparse(url).port or 8000
    return (
        f"cannot connect to {url}: connection refused (no server is listening there). "
        f"Start one with `superalign serve MODEL --port {port}`, or check the URL."
    )

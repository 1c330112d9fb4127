"""An OpenAI-compatible HTTP server for any HF causal LM (stdlib only).

``superalign serve MODEL --port 8000`` (or :func:`serve`) loads ``MODEL`` with
:func:`~superalign.models.load.load_model` and answers:

- ``GET /v1/models``: the served model's name (a local model by its file or folder name, never a
  path) and its load record under ``superalign`` (absolute paths shortened to their last part);
- ``POST /v1/completions``: ``prompt`` (a string or a list), ``max_tokens`` (16), ``temperature``
  (1; 0 is greedy), ``top_p``, ``top_k`` (an extension, as in vLLM), ``stop``, ``seed``, ``n``,
  ``logprobs`` (k: the legacy ``{tokens, token_logprobs, top_logprobs, text_offset}``),
  ``stream``;
- ``POST /v1/chat/completions``: ``messages`` rendered with :func:`render_chat`, the same
  sampling fields (``max_tokens`` or ``max_completion_tokens``, default 256), and
  ``logprobs: true`` with ``top_logprobs: k``.

Generation is :func:`superalign.models.sampling.sample`. Log-probs are those of the model
itself at temperature 1, whatever the sampling settings; top-k alternatives come from one
teacher-forced forward over prompt + completion after sampling (exact, not from the sampler).
Requests are served one at a time (a lock around the model); a bad field answers HTTP 400 with
``{"error": {"message", "type", "param"}}``. Unknown fields (``user``, ...) are ignored; the
request's ``model`` is not checked.

The server stays up under bad or abandoned requests:

- The model's context (``max_position_embeddings`` or its config's equivalent) bounds every
  request: ``max_tokens`` above it, an empty prompt, or a prompt that leaves no room for a new
  token answer 400 stating the limit; a completion that reaches the end of the context ends
  there with ``finish_reason: "length"``.
- Generation checks after every token whether the client has hung up (then it stops and
  nothing is sent) or the request's time limit (``request_timeout``, 60 s, counted from when it
  gets the model) has passed (then it stops and answers what it has, with ``finish_reason:
  "length"``). So one request holds the model for at most that long, and a request whose client
  left while it waited for the model never runs.
- ``stream: true`` answers server-sent events as OpenAI's: one ``data: {chunk}`` per piece of
  text (``text_completion`` chunks, or ``chat.completion.chunk`` with ``delta``), a last chunk
  per choice carrying ``finish_reason``, a usage chunk when ``stream_options.include_usage``,
  then ``data: [DONE]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superalign.config import ConfigError
from superalign.models.load import load_model
from superalign.models.sampling import completion_text, encode_prompts, eos_token_ids, sample

MAX_LOGPROBS = 20
"""Most alternatives per token a request may ask for (as vLLM's default)."""
MAX_BODY_BYTES = 16 << 20
REQUEST_TIMEOUT = 60.0
"""Default seconds a request may generate before it is cut (``--request-timeout``)."""
MAX_TOKENS_WITHOUT_CONTEXT = 1 << 20
"""Cap on ``max_tokens`` for a model whose config names no context length."""


class BadRequest(ValueError):
    """A request field is invalid; answered with HTTP 400 naming the field."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


class ClientGone(Exception):
    """The client hung up before its request got the model; nothing is answered."""


@dataclass
class SamplingParams:
    """Sampling fields shared by both endpoints, validated."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: list[str]
    seed: int | None
    n: int


class Job(NamedTuple):
    """A validated request of either endpoint, ready to generate."""

    chat: bool
    """``/v1/chat/completions`` (one rendered conversation) or ``/v1/completions``."""
    prompts: list[str]
    params: SamplingParams
    """``max_tokens`` already cut to what the context leaves after the longest prompt."""
    top: int | None
    """Alternatives per token to report; None: no log-probs."""
    stream: bool
    include_usage: bool
    """Streaming only: send a last chunk with ``usage`` (``stream_options.include_usage``)."""


class Choice(NamedTuple):
    """One generated completion, with what the response formats need."""

    prompt_index: int
    text: str
    """Decoded completion, cut before a stop string; EOS left out."""
    token_ids: list[int]
    """Every sampled token (EOS, or the tokens that completed a stop string, included)."""
    token_logprobs: list[float]
    """log p(token | prefix) under the model (temperature 1, no filtering)."""
    top: list[list[tuple[int, float]]] | None
    """Per token, the k most likely (id, logprob), when asked for."""
    finish_reason: str
    """``stop`` (EOS or a stop string) or ``length`` (``max_tokens``, the context's end or the
    time limit reached)."""


# --- server ---------------------------------------------------------------------------------------


class ModelServer(ThreadingHTTPServer):
    """A stdlib threading HTTP server holding one model, its tokenizer and a lock around them."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        model,
        tokenizer,
        model_name: str,
        info,
        verbose: bool,
        request_timeout: float | None = REQUEST_TIMEOUT,
    ):
        super().__init__(address, _Handler)
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.info = None if info is None else _without_paths(info)
        self.verbose = verbose
        self.request_timeout = request_timeout or None
        self.context = context_length(model)
        """Positions the model was built for (prompt and completion together); None: unknown."""
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket (the real port when 0 was asked for)."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str = "superalign",
    *,
    info: dict[str, Any] | None = None,
    verbose: bool = False,
    request_timeout: float | None = REQUEST_TIMEOUT,
) -> ModelServer:
    """A bound, not yet running server; call ``serve_forever()`` (e.g. in a thread).

    ``port=0`` picks a free port (read it from ``server.server_address``). ``info`` (e.g.
    ``LoadedModel.info``) is shown under ``superalign`` in ``/v1/models``, absolute paths
    shortened to their last part; ``verbose`` logs each request to stderr.
    ``request_timeout`` is the most seconds one request may generate (None or 0: no limit).
    """
    return ModelServer(
        (host, port), model, tokenizer, model_name, info, verbose, request_timeout=request_timeout
    )


def serve(
    spec: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    request_timeout: float | None = REQUEST_TIMEOUT,
) -> None:
    """Load ``spec`` with :func:`load_model` and serve it until Ctrl-C."""
    if request_timeout is not None and request_timeout < 0:
        raise ConfigError(
            f"--request-timeout must be >= 0 seconds (0: no limit), not {request_timeout:g}"
        )
    loaded = load_model(spec, device=device)
    name = served_name(spec, loaded.info)
    server = make_server(
        loaded.model,
        loaded.tokenizer,
        host,
        port,
        name,
        info=loaded.info,
        verbose=True,
        request_timeout=request_timeout,
    )
    limit = f"{request_timeout:g} s a request" if request_timeout else "no time limit"
    print(
        f"superalign: serving {spec} as {name!r} at {server.url}/v1 "
        f"(OpenAI-compatible; context {server.context or 'unknown'} tokens; {limit}; "
        "Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("superalign: stopped", flush=True)
    finally:
        server.server_close()


def served_name(spec: str, info: dict[str, Any]) -> str:
    """The name ``/v1/models`` shows for ``spec``: presets and hub ids as given; a local model
    by its folder name (a run's ``model/`` folder by its run's) or its ``.gguf`` file's stem."""
    if info.get("source") not in ("gguf", "run", "folder"):
        return spec
    path = Path(spec).expanduser().resolve()
    if path.is_file():
        return path.stem
    return path.parent.name if path.name == "model" else path.name


def context_length(model: PreTrainedModel) -> int | None:
    """Positions the model was built for, from its config; None when the config names none."""
    config = model.config
    if hasattr(config, "get_text_config"):  # multimodal configs keep it in the text part
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _without_paths(value: Any) -> Any:
    """``value`` with every absolute path (in nested dicts and lists) cut to its last part."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


class Watch:
    """Decides when a request's generation must end: its client hung up, or its time is up.

    The clock starts at :meth:`start` (when the request gets the model). A client counts as gone
    when its socket reads as closed (or broken); a write to it that fails counts the same.
    """

    def __init__(self, connection: socket.socket | None, timeout: float | None):
        self.connection = connection
        self.timeout = timeout
        self.deadline: float | None = None
        self.started = time.monotonic()
        self.reason: str | None = None
        """Why generation stopped early: ``"disconnect"``, ``"timeout"``, or None."""

    def start(self) -> None:
        self.started = time.monotonic()
        self.deadline = None if self.timeout is None else self.started + self.timeout

    def should_stop(self) -> bool:
        """Whether generation must stop now (and :attr:`reason` says why)."""
        if self.reason is None:
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.reason = "timeout"
            elif self.client_gone():
                self.reason = "disconnect"
        return self.reason is not None

    def client_gone(self) -> bool:
        """Whether the client closed its connection: a peek that does not wait reads its end."""
        if self.connection is None:
            return False
        timeout = self.connection.gettimeout()
        try:
            self.connection.settimeout(0)
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:  # nothing to read: still there
            return False
        except OSError:  # reset, or already closed
            return True
        finally:
            with contextlib.suppress(OSError):
                self.connection.settimeout(timeout)


@contextlib.contextmanager
def holding_model(server: ModelServer, watch: Watch) -> Iterator[None]:
    """Hold the model lock, waiting in turn; :class:`ClientGone` if the client leaves meanwhile."""
    while not server.lock.acquire(timeout=0.1):
        if watch.client_gone():
            raise ClientGone
    try:
        watch.start()
        yield
    finally:
        server.lock.release()


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            card = {
                "id": self.server.model_name,
                "object": "model",
                "created": 0,
                "owned_by": "superalign",
            }
            if self.server.info is not None:
                card["superalign"] = self.server.info
            self._send(200, {"object": "list", "data": [card]})
        elif path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, _error(f"no such endpoint: GET {path}", "not_found_error"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        parse = {"/v1/completions": completion_job, "/v1/chat/completions": chat_job}.get(path)
        if parse is None:
            self._send(404, _error(f"no such endpoint: POST {path}", "not_found_error"))
            return
        watch = Watch(self.connection, self.server.request_timeout)
        stream: _Stream | None = None
        try:
            job = parse(self.server, self._read_json())
            if job.stream:
                stream = _Stream(self, job, watch)
                stream.open()
                choices, usage = generate(self.server, job, watch, stream.step)
                if watch.reason != "disconnect":
                    stream.close(choices, usage)
            else:
                choices, usage = generate(self.server, job, watch)
                if watch.reason != "disconnect":
                    self._send(200, response(self.server, job, choices, usage))
        except ClientGone:
            watch.reason = "disconnect"
        except BadRequest as e:
            self._send(400, _error(str(e), "invalid_request_error", e.param))
        except Exception as e:  # a bug or an out-of-memory: tell the client, keep serving
            error = _error(f"{type(e).__name__}: {e}", "server_error")
            if stream is None:
                self._send(500, error)
            else:  # the 200 is sent: OpenAI's clients raise on an error event
                stream.event(error)
        if watch.reason is not None:
            self.log_message(
                '"%s" stopped after %.1f s: %s',
                self.requestline,
                time.monotonic() - watch.started,
                "the client disconnected"
                if watch.reason == "disconnect"
                else f"the time limit of {watch.timeout:g} s passed",
            )

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY_BYTES:
            raise BadRequest(
                None, f"the request needs a JSON body of at most {MAX_BODY_BYTES} bytes"
            )
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(None, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest(None, "the body must be a JSON object")
        return body

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client left; nothing to tell it
            pass

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def _error(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param}}


# --- endpoints ------------------------------------------------------------------------------------


def completion_job(server: ModelServer, body: dict[str, Any]) -> Job:
    """``POST /v1/completions``, validated: one prompt or a list, ``n`` completions of each."""
    prompts = body.get("prompt")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompt", "prompt must be a string or a non-empty list of strings")
    if body.get("echo"):
        raise BadRequest("echo", "echo is not supported")
    stream, include_usage = _stream(body)
    params = sampling_params(body, default_max_tokens=16, context=server.context)
    top = _optional_int(body, "logprobs", 0, MAX_LOGPROBS)
    if stream and top is not None:
        raise BadRequest("logprobs", "logprobs is not supported with stream: true")
    params = fit_context(server, prompts, params, "prompt")
    return Job(False, prompts, params, top, stream, include_usage)


def chat_job(server: ModelServer, body: dict[str, Any]) -> Job:
    """``POST /v1/chat/completions``, validated: one conversation, ``n`` replies."""
    messages = _messages(body.get("messages"))
    if "max_completion_tokens" in body and "max_tokens" not in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    stream, include_usage = _stream(body)
    params = sampling_params(body, default_max_tokens=256, context=server.context)
    want = body.get("logprobs", False)
    if not isinstance(want, bool):
        raise BadRequest("logprobs", "logprobs must be true or false in chat completions")
    if stream and want:
        raise BadRequest("logprobs", "logprobs is not supported with stream: true")
    top = _optional_int(body, "top_logprobs", 0, MAX_LOGPROBS)
    if top is not None and not want:
        raise BadRequest("top_logprobs", "top_logprobs needs logprobs: true")
    prompts = [render_chat(server.tokenizer, messages)]
    params = fit_context(server, prompts, params, "messages")
    return Job(True, prompts, params, (top or 0) if want else None, stream, include_usage)


def fit_context(
    server: ModelServer, prompts: list[str], params: SamplingParams, param: str
) -> SamplingParams:
    """``params`` with ``max_tokens`` cut to what the context leaves after the longest prompt.

    :class:`BadRequest` (naming ``param``) for a prompt of no tokens, or one that leaves no room
    for a new token in the model's context.
    """
    lengths = [len(ids) for ids in encode_prompts(server.tokenizer, prompts)]
    for i, length in enumerate(lengths):
        where = param if len(prompts) == 1 else f"{param}[{i}]"
        if length == 0 or not prompts[i]:
            raise BadRequest(param, f"{where} is empty: give at least one token of text")
        if server.context is not None and length >= server.context:
            raise BadRequest(
                param,
                f"{where} is {length} tokens, but this model's context is {server.context} "
                f"tokens, prompt and completion together: a prompt may have at most "
                f"{server.context - 1}",
            )
    if server.context is None:
        return params
    return replace(params, max_tokens=min(params.max_tokens, server.context - max(lengths)))


def response(
    server: ModelServer, job: Job, choices: list[Choice], usage: dict[str, int]
) -> dict[str, Any]:
    """The JSON answer to a non-streaming ``job``, in OpenAI's format for its endpoint."""
    tok = server.tokenizer
    if job.chat:
        want = job.top is not None
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": server.model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": {"content": _chat_logprobs(tok, c)} if want else None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": usage,
        }
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": server.model_name,
        "choices": [
            {
                "index": i,
                "text": c.text,
                "logprobs": None
                if job.top is None
                else _legacy_logprobs(tok, job.prompts[c.prompt_index], c),
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage,
    }


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt text of a conversation, ready for the assistant's reply.

    With a chat template: the template with ``add_generation_prompt=True`` (a leading BOS it
    writes is dropped when the tokenizer adds one itself, so it is not doubled). Without one:
    one ``role: content`` line per message, then ``assistant:``.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        if (
            bos
            and text.startswith(bos)
            and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
        ):
            text = text[len(bos) :]
        return text
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


# --- streaming ------------------------------------------------------------------------------------


class _Stream:
    """Sends a job's completions as server-sent events while they are sampled, as OpenAI does.

    Each step sends the text a row gained, holding back what later tokens may still change:
    a partial UTF-8 character (U+FFFD), trailing whitespace (tokenizers may clean it up), and
    an ending that could start a stop string. :meth:`close` sends the rest of each choice with its
    ``finish_reason``, the usage chunk when asked for, and ``data: [DONE]``.
    """

    WRITE_TIMEOUT = 10.0
    """Seconds a write may wait on a client that reads nothing before it counts as gone."""

    def __init__(self, handler: _Handler, job: Job, watch: Watch):
        self.handler = handler
        self.server = handler.server
        self.job = job
        self.watch = watch
        self.sent = [""] * (len(job.prompts) * job.params.n)
        """Per choice, the text sent so far."""
        self.head = {
            "id": f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if job.chat else "text_completion",
            "created": int(time.time()),
            "model": self.server.model_name,
        }

    def open(self) -> None:
        """Send the 200 and its headers (and, for chat, each choice's ``role``)."""
        self.handler.connection.settimeout(self.WRITE_TIMEOUT)
        self.handler.send_response(200)
        self.handler.send_header("Content-Type", "text/event-stream")
        self.handler.send_header("Cache-Control", "no-cache")
        self.handler.end_headers()
        if self.job.chat:
            for i in range(len(self.sent)):
                self.event(self._chunk(i, "", None, role=True))

    def step(self, first: int, tokens: list[list[int]]) -> None:
        """Send what each row of the batch starting at choice ``first`` has newly settled."""
        for j, row in enumerate(tokens):
            i = first + j
            text = completion_text(
                self.server.tokenizer, row, self.server.eos_ids, self.job.params.stop
            )
            settled = _settled(text, self.job.params.stop)
            if len(settled) > len(self.sent[i]) and settled.startswith(self.sent[i]):
                self.event(self._chunk(i, settled[len(self.sent[i]) :], None))
                self.sent[i] = settled

    def close(self, choices: list[Choice], usage: dict[str, int]) -> None:
        """Send each choice's remaining text with its ``finish_reason``, usage, ``[DONE]``."""
        for i, c in enumerate(choices):
            rest = c.text[len(self.sent[i]) :] if c.text.startswith(self.sent[i]) else ""
            if self.job.chat and rest:
                self.event(self._chunk(i, rest, None))
                rest = ""
            self.event(self._chunk(i, rest, c.finish_reason))
        if self.job.include_usage:
            self.event({**self.head, "choices": [], "usage": usage})
        self._write(b"data: [DONE]\n\n")

    def event(self, payload: dict[str, Any]) -> None:
        self._write(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _chunk(self, i: int, text: str, finish: str | None, role: bool = False) -> dict[str, Any]:
        if self.job.chat:
            delta = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self.head, "choices": [choice]}

    def _write(self, data: bytes) -> None:
        if self.watch.reason == "disconnect":
            return
        try:
            self.handler.wfile.write(data)
        except OSError:  # reset, broken pipe, or a client that stopped reading
            self.watch.reason = "disconnect"


def _settled(text: str, stop: list[str]) -> str:
    """The start of a partial completion's text that later tokens cannot change."""
    end = len(text)
    while end and (text[end - 1].isspace() or text[end - 1] == "\ufffd"):
        end -= 1
    held = max((k for s in stop for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
    return text[: end - held]


# --- generation -----------------------------------------------------------------------------------


def generate(
    server: ModelServer,
    job: Job,
    watch: Watch | None = None,
    emit: Callable[[int, list[list[int]]], None] | None = None,
) -> tuple[list[Choice], dict[str, int]]:
    """``n`` completions per prompt (prompt-major order) and the token usage.

    Waits its turn for the model; ``watch`` (default: no client, no time limit) ends generation
    early; ``emit(first, tokens)`` sees the tokens after every step (streaming).
    """
    watch = watch or Watch(None, None)
    params = job.params
    rows = [p for p in job.prompts for _ in range(params.n)]

    def on_step(first: int, tokens: list[list[int]]) -> bool:
        if emit is not None:
            emit(first, tokens)
        return watch.should_stop()

    with holding_model(server, watch):
        s = sample(
            server.model,
            server.tokenizer,
            rows,
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            stop=params.stop,
            seed=params.seed,
            on_step=on_step,
        )
        logps: list[list[float]] = s.logprobs
        tops: list[Any] = [None] * len(rows)
        if job.top is not None and watch.reason != "disconnect":
            scored = [
                teacher_forced_top(server.model, p, c, job.top)
                for p, c in zip(s.prompt_ids, s.completion_ids, strict=True)
            ]
            logps, tops = [r[0] for r in scored], [r[1] for r in scored]
    choices = [
        Choice(
            i // params.n,
            s.texts[i],
            s.completion_ids[i],
            logps[i],
            tops[i],
            "stop" if s.finished[i] else "length",
        )
        for i in range(len(rows))
    ]
    prompt_tokens = sum(len(s.prompt_ids[i]) for i in range(0, len(rows), params.n))
    completion_tokens = sum(len(c) for c in s.completion_ids)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return choices, usage


@torch.no_grad()
def teacher_forced_top(
    model: PreTrainedModel, prompt_ids: list[int], completion_ids: list[int], k: int
) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Log-probs of each completion token and the ``k`` most likely tokens at each position.

    One forward over prompt + completion (one row, no padding).
    """
    if not completion_ids:
        return [], []
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + completion_ids], device=device)
    start = len(prompt_ids) - 1  # the logits at position t predict token t + 1
    logits = model(input_ids=ids).logits[0, start : start + len(completion_ids)].float()  # [C, V]
    logp = F.log_softmax(logits, dim=-1)
    targets = torch.tensor(completion_ids, device=device)[:, None]  # [C, 1]
    chosen = logp.gather(-1, targets).squeeze(-1)  # [C]
    values, indices = logp.topk(k, dim=-1) if k > 0 else (logp[:, :0], logp[:, :0].long())
    top = [
        list(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(indices, values, strict=True)
    ]
    return chosen.tolist(), top


def _legacy_logprobs(tokenizer: PreTrainedTokenizerBase, prompt: str, c: Choice) -> dict[str, Any]:
    """OpenAI's legacy format; ``top_logprobs`` also holds the chosen token, as OpenAI's does."""
    tokens = [tokenizer.decode([t]) for t in c.token_ids]
    offsets = [
        len(prompt) + len(tokenizer.decode(c.token_ids[:j])) for j in range(len(c.token_ids))
    ]
    top_dicts = []
    for j, alternatives in enumerate(c.top or []):
        d: dict[str, float] = {}
        for t, lp in alternatives:
            d.setdefault(tokenizer.decode([t]), lp)  # two ids may decode alike: keep the likelier
        d.setdefault(tokens[j], c.token_logprobs[j])
        top_dicts.append(d)
    return {
        "tokens": tokens,
        "token_logprobs": c.token_logprobs,
        "top_logprobs": top_dicts,
        "text_offset": offsets,
    }


def _chat_logprobs(tokenizer: PreTrainedTokenizerBase, c: Choice) -> list[dict[str, Any]]:
    """OpenAI's chat format: per token ``{token, logprob, bytes, top_logprobs: [...]}``."""
    out = []
    for j, t in enumerate(c.token_ids):
        alternatives = c.top[j] if c.top else []
        top = [
            {"token": tokenizer.decode([a]), "logprob": lp, "bytes": None} for a, lp in alternatives
        ]
        token = tokenizer.decode([t])
        out.append(
            {"token": token, "logprob": c.token_logprobs[j], "bytes": None, "top_logprobs": top}
        )
    return out


# --- request validation ---------------------------------------------------------------------------


def sampling_params(
    body: dict[str, Any], default_max_tokens: int, context: int | None = None
) -> SamplingParams:
    """The sampling fields of a request, with OpenAI's defaults; :class:`BadRequest` if invalid.

    ``context`` (the model's, in tokens) bounds ``max_tokens``; the default is cut to it.
    """
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name):
            raise BadRequest(name, f"{name} is not supported (only 0)")
    if body.get("logit_bias"):
        raise BadRequest("logit_bias", "logit_bias is not supported")
    max_tokens = _optional_int(body, "max_tokens", 0, MAX_TOKENS_WITHOUT_CONTEXT)
    if context is not None and max_tokens is not None and max_tokens > context:
        raise BadRequest(
            "max_tokens",
            f"max_tokens is {max_tokens}, but this model's context is {context} tokens, "
            f"prompt and completion together: ask for at most {context} (less the prompt)",
        )
    if max_tokens is None:
        max_tokens = default_max_tokens if context is None else min(default_max_tokens, context)
    top_k = _optional_int(body, "top_k", -1, 1 << 30)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 100.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(top_k or 0, 0),  # vLLM's -1 and OpenAI's absence both mean no top-k
        stop=_stop(body.get("stop")),
        seed=_optional_int(body, "seed", -(1 << 63), (1 << 63) - 1),
        n=_optional_int(body, "n", 1, 128) or 1,
    )


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """``(stream, include_usage)`` of a request."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream", f"stream must be true or false, not {stream!r}")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not stream:
        raise BadRequest("stream_options", "stream_options needs stream: true")
    usage = options.get("include_usage", False) if isinstance(options, dict) else None
    if not isinstance(usage, bool):
        raise BadRequest("stream_options", 'stream_options must be {"include_usage": bool}')
    return True, usage


def _optional_int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(name, f"{name} must be an integer in [{low}, {high}], not {value!r}")
    return value


def _number(
    body: dict[str, Any], name: str, default: float, low: float, high: float, low_open: bool = False
) -> float:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (low < value if low_open else low <= value) or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise BadRequest(name, f"{name} must be a number in {interval}, not {value!r}")
    return float(value)


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest("stop", "stop must be a non-empty string or a list of them")
    return stops


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(
                f"messages[{i}]", f"messages[{i}] must be an object with a string role"
            )
        out.append({"role": m["role"], "content": _content(m.get("content"), i)})
    return out


def _content(content: Any, i: int) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        return "".join(str(p.get("text", "")) for p in content)
    raise BadRequest(f"messages[{i}].content", "content must be a string or a list of text parts")

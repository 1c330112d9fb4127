"""An OpenAI-compatible HTTP server for any HF causal LM (stdlib only).

``superalign serve MODEL --port 8000`` (or :func:`serve`) loads ``MODEL`` with
:func:`~superalign.models.load.load_model` and answers:

- ``GET /v1/models``: the served model's name (and its load record under ``superalign``);
- ``POST /v1/completions``: ``prompt`` (a string or a list), ``max_tokens`` (16), ``temperature``
  (1; 0 is greedy), ``top_p``, ``top_k`` (an extension, as in vLLM), ``stop``, ``seed``, ``n``,
  ``logprobs`` (k: the legacy ``{tokens, token_logprobs, top_logprobs, text_offset}``);
- ``POST /v1/chat/completions``: ``messages`` rendered with :func:`render_chat`, the same
  sampling fields (``max_tokens`` or ``max_completion_tokens``, default 256), and
  ``logprobs: true`` with ``top_logprobs: k``.

Generation is :func:`superalign.models.sampling.sample`. Log-probs are those of the model
itself at temperature 1, whatever the sampling settings; top-k alternatives come from one
teacher-forced forward over prompt + completion after sampling (exact, not from the sampler).
Requests are served one at a time (a lock around the model); a bad field answers HTTP 400 with
``{"error": {"message", "type", "param"}}``. Unknown fields (``user``, ...) are ignored; the
request's ``model`` is not checked.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from superalign.models.load import load_model
from superalign.models.sampling import sample

MAX_LOGPROBS = 20
"""Most alternatives per token a request may ask for (as vLLM's default)."""
MAX_BODY_BYTES = 16 << 20


class BadRequest(ValueError):
    """A request field is invalid; answered with HTTP 400 naming the field."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


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
    """``stop`` (EOS or a stop string) or ``length`` (``max_tokens`` reached)."""


# --- server ---------------------------------------------------------------------------------------


class ModelServer(ThreadingHTTPServer):
    """A stdlib threading HTTP server holding one model, its tokenizer and a lock around them."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], model, tokenizer, model_name: str, info, verbose: bool
    ):
        super().__init__(address, _Handler)
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.info = info
        self.verbose = verbose
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
) -> ModelServer:
    """A bound, not yet running server; call ``serve_forever()`` (e.g. in a thread).

    ``port=0`` picks a free port (read it from ``server.server_address``). ``info`` (e.g.
    ``LoadedModel.info``) is shown under ``superalign`` in ``/v1/models``; ``verbose`` logs
    each request to stderr.
    """
    return ModelServer((host, port), model, tokenizer, model_name, info, verbose)


def serve(spec: str, host: str = "127.0.0.1", port: int = 8000, device: str | None = None) -> None:
    """Load ``spec`` with :func:`load_model` and serve it until Ctrl-C."""
    loaded = load_model(spec, device=device)
    server = make_server(
        loaded.model, loaded.tokenizer, host, port, spec, info=loaded.info, verbose=True
    )
    print(
        f"superalign: serving {spec} at {server.url}/v1 (OpenAI-compatible; Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("superalign: stopped", flush=True)
    finally:
        server.server_close()


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
        route = {"/v1/completions": completions, "/v1/chat/completions": chat_completions}.get(path)
        if route is None:
            self._send(404, _error(f"no such endpoint: POST {path}", "not_found_error"))
            return
        try:
            body = self._read_json()
            self._send(200, route(self.server, body))
        except BadRequest as e:
            self._send(400, _error(str(e), "invalid_request_error", e.param))
        except Exception as e:  # a bug or an out-of-memory: tell the client, keep serving
            self._send(500, _error(f"{type(e).__name__}: {e}", "server_error"))

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
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def _error(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param}}


# --- endpoints ------------------------------------------------------------------------------------


def completions(server: ModelServer, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/completions``: legacy completions of one prompt or a list."""
    prompts = body.get("prompt")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompt", "prompt must be a string or a non-empty list of strings")
    if body.get("echo"):
        raise BadRequest("echo", "echo is not supported")
    params = sampling_params(body, default_max_tokens=16)
    top = _optional_int(body, "logprobs", 0, MAX_LOGPROBS)
    choices, usage = generate(server, prompts, params, top)
    tok = server.tokenizer
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
                if top is None
                else _legacy_logprobs(tok, prompts[c.prompt_index], c),
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage,
    }


def chat_completions(server: ModelServer, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/chat/completions``: one conversation, ``n`` replies."""
    messages = _messages(body.get("messages"))
    if "max_completion_tokens" in body and "max_tokens" not in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    params = sampling_params(body, default_max_tokens=256)
    want = body.get("logprobs", False)
    if not isinstance(want, bool):
        raise BadRequest("logprobs", "logprobs must be true or false in chat completions")
    top = _optional_int(body, "top_logprobs", 0, MAX_LOGPROBS)
    if top is not None and not want:
        raise BadRequest("top_logprobs", "top_logprobs needs logprobs: true")
    prompt = render_chat(server.tokenizer, messages)
    choices, usage = generate(server, [prompt], params, (top or 0) if want else None)
    tok = server.tokenizer
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


# --- generation -----------------------------------------------------------------------------------


def generate(
    server: ModelServer, prompts: list[str], params: SamplingParams, top: int | None
) -> tuple[list[Choice], dict[str, int]]:
    """``n`` completions per prompt (prompt-major order) and the token usage."""
    rows = [p for p in prompts for _ in range(params.n)]
    with server.lock:
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
        )
        logps: list[list[float]] = s.logprobs
        tops: list[Any] = [None] * len(rows)
        if top is not None:
            scored = [
                teacher_forced_top(server.model, p, c, top)
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


def sampling_params(body: dict[str, Any], default_max_tokens: int) -> SamplingParams:
    """The sampling fields of a request, with OpenAI's defaults; :class:`BadRequest` if invalid."""
    if body.get("stream"):
        raise BadRequest("stream", "streaming is not supported; leave stream unset or false")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name):
            raise BadRequest(name, f"{name} is not supported (only 0)")
    if body.get("logit_bias"):
        raise BadRequest("logit_bias", "logit_bias is not supported")
    max_tokens = _optional_int(body, "max_tokens", 0, 1 << 20)
    top_k = _optional_int(body, "top_k", -1, 1 << 30)
    return SamplingParams(
        max_tokens=default_max_tokens if max_tokens is None else max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 100.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(top_k or 0, 0),  # vLLM's -1 and OpenAI's absence both mean no top-k
        stop=_stop(body.get("stop")),
        seed=_optional_int(body, "seed", -(1 << 63), (1 << 63) - 1),
        n=_optional_int(body, "n", 1, 128) or 1,
    )


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

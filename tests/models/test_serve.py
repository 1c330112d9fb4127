"""The OpenAI-compatible server and its client, end to end over real HTTP on a random tiny model.

What the server returns is checked against local computation: greedy and seeded texts against
``sample``, log-probs against teacher-forced ``token_logprobs``, the top next token against the
model's argmax. The server stays up: abandoned and over-long requests stop (an untrained model
that never emits EOS and has 2^20 positions makes a ``max_tokens: 1000000`` request run), and
streaming is checked with the ``openai`` client against ``superalign serve`` run as a command
(on a tiny model that has memorised ``TEXTS``, so it streams words, not stray bytes).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from superalign.models.http import BackendError, OpenAIClient
from superalign.models.sampling import left_pad, sample, token_logprobs
from superalign.models.serve import make_server, render_chat, served_name
from superalign.models.tiny import build_model
from superalign.models.tokenizer import train_tokenizer

torch.set_num_threads(1)

TEXTS = [
    "The cat sat on the mat. The dog sat on the log.",
    "1 + 2 = 3. 4 + 5 = 9. 10 + 20 = 30.",
    "user: hello\nassistant: hi there, how can I help?",
]
PROMPTS = ["The cat sat", "1 + 2 =", "hello"]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_tokenizer(TEXTS * 20, vocab_size=300)
    model = build_model("tiny", tokenizer, seed=1).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def server(tiny):
    model, tokenizer = tiny
    srv = make_server(model, tokenizer, port=0, model_name="tiny-test", info={"source": "test"})
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def client(server) -> OpenAIClient:
    return OpenAIClient(server.url)


def _post(server, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_lists_the_served_model(client):
    assert client.models() == ["tiny-test"]
    assert client.model == "tiny-test"


def test_greedy_batch_matches_local_sample(client, tiny):
    model, tokenizer = tiny
    got = client.complete(PROMPTS, max_tokens=12, temperature=0)
    local = sample(model, tokenizer, PROMPTS, max_new_tokens=12, temperature=0)
    assert [c.text for c in got] == local.texts
    assert [c.finish_reason for c in got] == ["stop" if f else "length" for f in local.finished]


def test_seeded_sampling_matches_local_sample(client, tiny):
    model, tokenizer = tiny
    got = client.complete(PROMPTS, max_tokens=10, temperature=0.8, top_p=0.9, seed=7)
    local = sample(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7)
    assert [c.text for c in got] == local.texts


def test_logprobs_match_teacher_forced_and_contain_the_chosen_token(client, tiny):
    model, tokenizer = tiny
    got = client.complete(PROMPTS, max_tokens=8, temperature=0, logprobs=5)
    local = sample(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=0)
    ref = token_logprobs(model, local.prompt_ids, local.completion_ids, tokenizer.pad_token_id)
    for c, r in zip(got, ref, strict=True):
        assert len(c.token_logprobs) == len(r) > 0
        assert max(abs(a - b) for a, b in zip(c.token_logprobs, r, strict=True)) < 1e-4
        for token, lp, top in zip(c.tokens, c.token_logprobs, c.top_logprobs, strict=True):
            assert token in top and top[token] == pytest.approx(lp, abs=1e-6)
            assert lp == pytest.approx(max(top.values()), abs=1e-6)  # greedy takes the argmax
            # 5 alternatives plus the chosen token, as OpenAI's legacy format has it, fewer
            # when two ids decode to the same string (partial UTF-8 bytes all show as U+FFFD)
            assert 1 <= len(top) <= 6


def test_legacy_logprobs_format_and_usage(server, tiny):
    _, tokenizer = tiny
    status, body = _post(
        server,
        "/v1/completions",
        {"prompt": PROMPTS[:2], "max_tokens": 5, "temperature": 0, "logprobs": 2, "n": 2},
    )
    assert status == 200
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    lp = body["choices"][2]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert lp["text_offset"][0] == len(PROMPTS[1])
    assert lp["text_offset"] == sorted(lp["text_offset"])
    prompt_tokens = sum(len(tokenizer(p)["input_ids"]) for p in PROMPTS[:2])
    completion_tokens = sum(len(c["logprobs"]["tokens"]) for c in body["choices"])
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def test_stop_strings_cut_like_local_sample(client, tiny):
    model, tokenizer = tiny
    full = sample(model, tokenizer, PROMPTS[:1], max_new_tokens=20, temperature=0).texts[0]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"pick another prompt: the greedy text {full!r} has no usable middle"
    got = client.complete(PROMPTS[:1], max_tokens=20, temperature=0, stop=[stop, "never-seen"])[0]
    local = sample(model, tokenizer, PROMPTS[:1], max_new_tokens=20, temperature=0, stop=[stop])
    assert got.text == local.texts[0]
    assert stop not in got.text and len(got.text) < len(full)
    assert got.finish_reason == "stop"


def test_chat_renders_roles_and_returns_chat_logprobs(client, tiny):
    model, tokenizer = tiny
    messages = [{"role": "user", "content": "hello"}]
    prompt = render_chat(tokenizer, messages)
    assert prompt == "user: hello\nassistant:"  # this tokenizer has no chat template
    got = client.chat(messages, max_tokens=6, temperature=0, logprobs=3)
    local = sample(model, tokenizer, [prompt], max_new_tokens=6, temperature=0)
    assert got.text == local.texts[0]
    assert len(got.tokens) == len(local.completion_ids[0])
    assert all(len(top) == 3 for top in got.top_logprobs)
    assert got.token_logprobs == pytest.approx(local.logprobs[0], abs=1e-4)


def test_render_chat_uses_the_template_without_doubling_bos(tiny):
    _, tokenizer = tiny
    templated = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    templated.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert render_chat(templated, messages) == "<system>Be brief.<user>hi<assistant>"


def test_next_token_logprobs_is_a_subdistribution_led_by_the_argmax(client, tiny):
    model, tokenizer = tiny
    top = client.next_token_logprobs(PROMPTS[1], top=10)
    assert 1 <= len(top) <= 10
    assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
    ids = torch.tensor([tokenizer(PROMPTS[1])["input_ids"]])
    with torch.no_grad():
        argmax = int(model(input_ids=ids).logits[0, -1].argmax())
    assert max(top, key=top.get) == tokenizer.decode([argmax])


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "hi", "temperature": -1}, "temperature"),
        ({"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": "hi", "logprobs": 50}, "logprobs"),
        ({"prompt": "hi", "stop": [""]}, "stop"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "hi", "stream": "yes"}, "stream"),
        ({"prompt": "hi", "stream": True, "logprobs": 1}, "logprobs"),
        ({"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_bad_fields_answer_400_naming_the_field(server, body, field):
    status, answer = _post(server, "/v1/completions", body)
    assert status == 400
    assert answer["error"]["param"] == field and field in answer["error"]["message"]


def test_bad_chat_request_and_client_error_message(server, client):
    status, answer = _post(server, "/v1/chat/completions", {"messages": [{"content": "hi"}]})
    assert status == 400 and answer["error"]["param"] == "messages[0]"
    with pytest.raises(BackendError, match="HTTP 400: top_p must be a number") as info:
        client.complete(["hi"], top_p=0.0)
    assert info.value.status == 400


def test_connection_refused_names_the_url_and_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    client = OpenAIClient(f"http://127.0.0.1:{port}", model="m")
    with pytest.raises(BackendError, match=rf"127\.0\.0\.1:{port}.*connection refused") as info:
        client.complete(["hi"])
    assert f"superalign serve MODEL --port {port}" in str(info.value)


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` requests, then a model list."""

    failures = 2
    seen = 0

    def do_GET(self):  # noqa: N802
        type(self).seen += 1
        ok = type(self).seen > type(self).failures
        data = json.dumps({"data": [{"id": "m"}]} if ok else {"error": {"message": "busy"}})
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("failures, retries, ok", [(2, 3, True), (9, 2, False)])
def test_client_retries_5xx_a_bounded_number_of_times(failures, retries, ok):
    handler = type("Flaky", (_Flaky,), {"failures": failures, "seen": 0})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = OpenAIClient(
            f"http://127.0.0.1:{srv.server_address[1]}", retries=retries, backoff=0.01
        )
        if ok:
            assert client.models() == ["m"]
        else:
            with pytest.raises(BackendError, match="HTTP 503: busy"):
                client.models()
        assert handler.seen == min(failures + 1, retries + 1)
    finally:
        srv.shutdown()
        srv.server_close()


# --- a server that stays up -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"prompt": ""}, {"prompt": ["hi", ""]}])
def test_an_empty_prompt_answers_400(server, body):
    status, answer = _post(server, "/v1/completions", body)
    assert status == 400
    assert answer["error"]["param"] == "prompt" and "empty" in answer["error"]["message"]


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/completions", {"prompt": "hi", "max_tokens": 257}, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 1_000_000}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                  "max_completion_tokens": 1000}, "max_tokens"),
        ("/v1/completions", {"prompt": TEXTS[0] * 60}, "prompt"),
        ("/v1/completions", {"prompt": ["hi", TEXTS[0] * 60]}, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": TEXTS[0] * 60}]},
         "messages"),
    ],
)  # fmt: skip
def test_requests_beyond_the_context_answer_400_stating_it(server, path, body, field):
    status, answer = _post(server, path, body)
    assert status == 400 and answer["error"]["param"] == field
    assert "context is 256 tokens" in answer["error"]["message"]  # the tiny model's positions


def test_a_completion_ends_at_the_end_of_the_context(server, tiny):
    _, tokenizer = tiny
    prompt = " ".join(["cat"] * 300)
    ids = tokenizer(prompt)["input_ids"]
    prompt = tokenizer.decode(ids[:253])  # leaves 3 of the 256 positions
    assert len(tokenizer(prompt)["input_ids"]) == 253
    status, body = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 200})
    assert status == 200
    assert (
        body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
    )


@pytest.fixture(scope="module")
def endless(tiny):
    """A server whose model never emits EOS and has 2^20 positions: generation runs on."""
    _, tokenizer = tiny
    model = build_model("tiny", tokenizer, max_positions=1 << 20, seed=2).eval()

    def no_eos(module, inputs, output):
        output.logits[..., tokenizer.eos_token_id] = float("-inf")

    model.register_forward_hook(no_eos)
    srv = make_server(model, tokenizer, port=0, model_name="endless")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _send_raw(server, path: str, body: dict) -> socket.socket:
    """Send a request and return the open socket without reading the answer."""
    data = json.dumps(body).encode()
    conn = socket.create_connection(server.server_address[:2])
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    conn.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return conn


def _wait_until_generating(server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.lock.locked():
        assert time.monotonic() < deadline, "the request never started generating"
        time.sleep(0.05)
    time.sleep(0.5)  # well into the generation


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_its_client_abandoned_stops_and_the_next_is_answered(endless, stream):
    body = {"prompt": "The cat", "max_tokens": 1_000_000, "temperature": 0, "stream": stream}
    conn = _send_raw(endless, "/v1/completions", body)
    _wait_until_generating(endless)
    if stream:
        assert conn.recv(4096).startswith(b"HTTP/1.0 200")  # the client saw the stream begin
    conn.close()
    start = time.monotonic()
    status, answer = _post(endless, "/v1/completions", {"prompt": "The cat", "max_tokens": 4})
    assert status == 200 and answer["usage"]["completion_tokens"] == 4
    assert time.monotonic() - start < 20  # about 0.1 s; without the check, 1M tokens first
    assert not endless.lock.locked()


def test_a_request_that_waited_for_the_model_and_was_abandoned_never_runs(endless):
    body = {"prompt": "The cat", "max_tokens": 1_000_000, "temperature": 0}
    first = _send_raw(endless, "/v1/completions", body)
    _wait_until_generating(endless)
    second = _send_raw(endless, "/v1/completions", body)
    time.sleep(0.3)
    second.close()  # gone while it waited its turn
    first.close()
    start = time.monotonic()
    assert _post(endless, "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200
    assert time.monotonic() - start < 20


def test_the_time_limit_cuts_a_long_request_and_unblocks_the_next(endless):
    srv = make_server(endless.model, endless.tokenizer, port=0, request_timeout=1.0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        answers: dict[str, tuple[int, dict, float]] = {}

        def ask(name: str, max_tokens: int) -> None:
            start = time.monotonic()
            status, body = _post(srv, "/v1/completions", {"prompt": "hi", "max_tokens": max_tokens})
            answers[name] = (status, body, time.monotonic() - start)

        long = threading.Thread(target=ask, args=("long", 1_000_000))
        long.start()
        _wait_until_generating(srv)
        ask("short", 3)
        long.join(timeout=30)
        status, body, seconds = answers["long"]
        assert status == 200 and body["choices"][0]["finish_reason"] == "length"
        assert 0 < body["usage"]["completion_tokens"] < 1_000_000
        assert 1.0 <= seconds < 15
        status, body, seconds = answers["short"]
        assert status == 200 and body["usage"]["completion_tokens"] == 3
        assert seconds < 15  # waited at most the rest of the long request's second
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize(
    "spec, source, name",
    [
        ("smollm2-135m-instruct", "preset", "smollm2-135m-instruct"),
        ("HuggingFaceTB/SmolLM2-135M", "hub", "HuggingFaceTB/SmolLM2-135M"),
        ("{tmp}/runs/sft-1a2b", "run", "sft-1a2b"),
        ("{tmp}/runs/sft-1a2b/model/", "folder", "sft-1a2b"),
        ("{tmp}/runs/../weights/smol.Q8_0.gguf", "gguf", "smol.Q8_0"),
    ],
)
def test_served_name_is_a_name_not_a_path(tmp_path, spec, source, name):
    (tmp_path / "runs/sft-1a2b/model").mkdir(parents=True)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights/smol.Q8_0.gguf").write_bytes(b"GGUF")
    assert served_name(spec.format(tmp=tmp_path), {"source": source}) == name


# --- `superalign serve` as a command, with the openai client --------------------------------------


def _memorised_model(tokenizer, steps: int = 150):
    """The tiny model trained to reproduce ``TEXTS`` (about 3 s on one core)."""
    model = build_model("tiny", tokenizer, seed=1)
    rows = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in TEXTS]
    ids, mask, pos = left_pad(rows, tokenizer.pad_token_id)
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """``superalign serve /abs/path/talker --port P`` in a subprocess; yields (url, folder)."""
    _, tokenizer = tiny
    folder = tmp_path_factory.mktemp("serve") / "talker"
    _memorised_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "superalign.cli", "serve", str(folder.resolve()), "--port",
         str(port), "--request-timeout", "30"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"server did not start: {proc.stderr.read()}") from None
                time.sleep(0.5)
        yield url, folder
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def openai_client(served):
    openai = pytest.importorskip("openai", reason="the openai client comes with the 'dev' extra")
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0)


def test_models_shows_the_name_not_the_path(served, openai_client):
    url, folder = served
    assert [m.id for m in openai_client.models.list()] == ["talker"]
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
        raw = response.read().decode()
    assert str(folder.parent) not in raw and json.loads(raw)["data"][0]["superalign"]["path"] == (
        "talker"
    )


def test_openai_client_streams_a_completion_from_superalign_serve(openai_client):
    kwargs = {"model": "talker", "prompt": "The cat", "max_tokens": 40, "temperature": 0}
    whole = openai_client.completions.create(**kwargs)
    assert whole.choices[0].text.startswith(" sat on the mat.")  # the model memorised TEXTS
    chunks = list(openai_client.completions.create(**kwargs, stream=True))
    texts = [c.choices[0].text for c in chunks]
    assert len([t for t in texts if t]) >= 5  # word by word, not one block at the end
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_openai_client_streams_a_chat_completion_with_usage(openai_client):
    kwargs = {
        "model": "talker",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 30,
        "temperature": 0,
    }
    whole = openai_client.chat.completions.create(**kwargs)
    chunks = list(
        openai_client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text.strip()
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_a_stream_never_shows_a_stop_string_and_ends_with_done(served):
    body = {"prompt": "The cat", "max_tokens": 40, "temperature": 0, "stop": ["dog"]}
    request = urllib.request.Request(
        served[0] + "/v1/completions",
        json.dumps({**body, "stream": True}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = response.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == " sat on the mat. The " and chunks[-1]["choices"][0]["finish_reason"] == "stop"

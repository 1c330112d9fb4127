"""The OpenAI-compatible server and its client, end to end over real HTTP on a random tiny model.

What the server returns is checked against local computation: greedy and seeded texts against
``sample``, log-probs against teacher-forced ``token_logprobs``, the top next token against the
model's argmax.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from superalign.models.http import BackendError, OpenAIClient
from superalign.models.sampling import sample, token_logprobs
from superalign.models.serve import make_server, render_chat
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
        ({"prompt": "hi", "stream": True}, "stream"),
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

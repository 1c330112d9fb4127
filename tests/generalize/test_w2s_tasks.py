"""weak_to_strong on any binary task: world statements, a jsonl file of (text, label) rows, the
model names of the real ladder, decoder-LM features, and the refusal of a non-binary task."""

import json
import random
import re

import numpy as np
import pytest
import torch

from superalign.config import ConfigError, load_config, to_dict
from superalign.generalize import classifiers
from superalign.generalize.classifiers import LMFeatures, StandardizedHead, resolve_layer
from superalign.generalize.weak_to_strong import WeakToStrongConfig, load_data
from superalign.runs import run_dir_for
from superalign.stages import STAGES, execute, stage_inputs

CITY = re.compile(r"The city of (.+) is in ")


def _world(**kw) -> WeakToStrongConfig:
    return WeakToStrongConfig(
        setting="world", **{"models": ["bow", "tiny"], "seeds": [0], "n_boot": 100, **kw}
    )


def test_config_takes_any_binary_task_family_and_the_ladders_names():
    cfg = load_config(
        WeakToStrongConfig,
        None,
        ["setting=world", "datasets=[cities]", "models=[bow,smollm2]"],
    )
    assert cfg.datasets == ["cities"] and cfg.models == ["bow", "smollm2"]
    assert WeakToStrongConfig(setting="world").datasets == ["cities"]
    assert WeakToStrongConfig(setting="world").models == ["bow", "minilm", "smollm2"]
    assert WeakToStrongConfig(setting="jsonl").datasets == ["jsonl"]
    full = WeakToStrongConfig(
        setting="world", models=["bow", "all-MiniLM-L6-v2", "smollm2-135m-instruct", "gemma3-270m"]
    )
    assert full.models == ["bow", "minilm", "smollm2", "gemma"]
    with pytest.raises(ConfigError, match="task family"):
        WeakToStrongConfig(setting="wrld")
    with pytest.raises(ConfigError, match="not binary"):
        WeakToStrongConfig(setting="arithmetic")
    with pytest.raises(ConfigError, match="pooling"):
        WeakToStrongConfig(setting="world", pooling="max")
    with pytest.raises(ConfigError, match="lm_layer"):
        WeakToStrongConfig(setting="world", lm_layer=1.5)


def test_world_statements_split_by_city_and_balanced():
    cfg = _world(n_train_weak=120, n_train_strong=80, n_test=60)
    d = load_data(cfg, "cities", 0)
    assert (len(d.weak_train.texts), len(d.strong_train.texts), len(d.test.texts)) == (120, 80, 60)
    for part in (d.weak_train, d.strong_train, d.test):
        assert part.labels.mean() == 0.5
        assert all(CITY.match(t) for t in part.texts)  # the bare statement, not the prompt
    cities = [{CITY.match(t)[1] for t in p.texts} for p in (d.weak_train, d.strong_train, d.test)]
    assert not cities[0] & cities[1]  # a city's true and false statements stay in one half
    assert not cities[2] & (cities[0] | cities[1])  # test cities are never trained on
    again = load_data(cfg, "cities", 0)
    assert again.strong_train.texts == d.strong_train.texts
    assert load_data(cfg, "cities", 1).strong_train.texts != d.strong_train.texts
    # another family with true/false statements (synthetic people): its statements are used
    facts = WeakToStrongConfig(setting="facts", n_train_weak=50, n_train_strong=50, n_test=40)
    f = load_data(facts, "facts", 0)
    assert (len(f.weak_train.texts), len(f.test.texts)) == (50, 40) and f.test.labels.mean() == 0.5


def _rows(path, n: int = 400, generation: bool = False):
    """``n`` (text, label) rows, labels alternating; a colour word names the label on half of
    the rows and is "green" on the others (all a bag of words can use on unseen items)."""
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(n):
            label = i % 2
            colour = ("red" if label else "blue") if rng.random() < 0.5 else "green"
            row = (
                {"prompt": f"item {i}?", "target": str(label)}
                if generation
                else {"text": f"Item {i} is {colour}.", "label": label}
            )
            f.write(json.dumps(row) + "\n")
    return path


def test_a_non_binary_task_is_a_clear_error(tmp_path):
    cfg = WeakToStrongConfig(
        setting="jsonl",
        models=["bow", "tiny"],
        task_options={"path": str(_rows(tmp_path / "g.jsonl", generation=True))},
    )
    with pytest.raises(ValueError, match="needs a binary task.*label"):
        load_data(cfg, "jsonl", 0)
    qa = _world(task_options={"variant": "qa"})
    with pytest.raises(ValueError, match="needs a binary task"):
        load_data(qa, "cities", 0)


class _Truth:
    """Synthetic strong features of a text: its label plus noise, and a noise feature (the
    same for the same text)."""

    def __init__(self, labels: dict[str, int]):
        self.labels = labels

    def features(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            rng = random.Random(t)
            x = [rng.gauss(0, 1) for _ in range(2)]
            x[0] += 4.0 * self.labels[t]
            rows.append(x)
        return torch.tensor(rows)


def test_jsonl_rows_run_end_to_end_with_a_strong_model(tmp_path, monkeypatch):
    path = _rows(tmp_path / "rows.jsonl")
    labels = {json.loads(r)["text"]: json.loads(r)["label"] for r in path.read_text().splitlines()}
    monkeypatch.setattr(classifiers.Resources, "decoder", lambda self, kind: _Truth(labels))
    cfg = WeakToStrongConfig(
        setting="jsonl",
        task_options={"path": str(path)},
        models=["bow", "smollm2"],
        n_train_weak=150,
        n_train_strong=150,
        n_test=80,
        seeds=[0, 1],
        epochs=10,
        head_lr=1e-2,
        n_boot=200,
        threads=1,
    )
    res = execute("weak_to_strong", cfg, root=tmp_path / "runs")
    rows = {r["loss"]: r for r in res.summary["table"]}
    assert set(rows) == {"xent", "conf"} and res.summary["datasets"] == ["jsonl"]
    xent = rows["xent"]
    # bow reads the colour word (right on ~75% of rows: all named ones, half of the green);
    # the synthetic features know the label (~0.98)
    assert 0.6 < xent["weak_acc"] < 0.9 and xent["ceiling_acc"] > xent["weak_acc"] + 0.1
    assert xent["pgr"] is not None and xent["pgr_low"] <= xent["pgr"] <= xent["pgr_high"]
    # the file's content keys the run: an edited file is a new run folder
    key = run_dir_for("weak_to_strong", to_dict(cfg), stage_inputs("weak_to_strong", cfg), tmp_path)
    with path.open("a") as f:
        f.write(json.dumps({"text": "Item x is red.", "label": 1}) + "\n")
    assert key != run_dir_for(
        "weak_to_strong", to_dict(cfg), stage_inputs("weak_to_strong", cfg), tmp_path
    )


def test_stages_that_take_a_task_key_on_its_options():
    for name in ("pretrain", "sft", "preferences", "rl", "dpo", "best_of_n", "judge_eval"):
        assert "task_options" in STAGES[name].inputs, name
    for name in ("weak_to_strong", "easy_to_hard", "interp", "redteam", "organism", "gate"):
        assert "task_options" in STAGES[name].inputs, name


def test_world_runs_end_to_end_with_bow_and_a_tiny_model(tmp_path):
    cfg = _world(n_train_weak=100, n_train_strong=100, n_test=60, epochs=1, threads=1)
    res = execute("weak_to_strong", cfg, root=tmp_path / "runs")
    assert [(r["weak"], r["strong"], r["loss"]) for r in res.summary["table"]] == [
        ("bow", "tiny", "xent"),
        ("bow", "tiny", "conf"),
    ]
    assert res.summary["data_sizes"]["cities"] == {
        "n_train_weak": 100,
        "n_train_strong": 100,
        "n_test": 60,
    }
    records = [json.loads(x) for x in (res.dir / "results.jsonl").read_text().splitlines()]
    assert {r["role"] for r in records} == {"weak", "w2s", "ceiling"}
    assert all(len(r["correct"]) == 60 for r in records)
    assert (res.dir / "accuracy.png").is_file()


def _tiny_lm():
    from transformers import LlamaConfig, LlamaModel

    from superalign.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["the city of lagos is in nigeria", "paris is in france"] * 20, 300)
    tok.padding_side = "right"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaModel(cfg).eval(), tok


def test_lm_features_read_the_last_real_token_at_the_chosen_layer():
    model, tok = _tiny_lm()
    assert resolve_layer(0.5, 30) == 15 and resolve_layer(0.5, 18) == 9
    assert resolve_layer(0.0, 4) == 0 and resolve_layer(1.0, 4) == 4
    texts = ["paris is in france", "the city of lagos is in nigeria today"]
    last = LMFeatures(model, tok, layer=2, pooling="last")
    mean = LMFeatures(model, tok, layer=2, pooling="mean")
    batched, pooled = last.features(texts), mean.features(texts)  # padded together
    for i, t in enumerate(texts):  # each alone, unpadded
        ids = tok([t], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
        assert torch.allclose(batched[i], h[-1], atol=1e-5)
        assert torch.allclose(pooled[i], h.mean(0), atol=1e-5)
    assert set(last.cache) == set(texts)


def test_mlp_head_starts_at_one_half_and_learns():
    x = torch.randn(64, 5)
    head = StandardizedHead(x, hidden=8)
    assert torch.allclose(head(x).softmax(-1), torch.full((64, 2), 0.5))
    settings = classifiers.TrainSettings(epochs=30, head_lr=1e-2, batch_size=16, head_hidden=8)
    y = (x[:, 0] * x[:, 1] > 0).long().numpy()  # XOR-like: not linearly separable
    clf = classifiers.FeatureClassifier(lambda texts: x[[int(t) for t in texts]], settings)
    texts = [str(i) for i in range(64)]
    losses = clf.fit(texts, np.eye(2)[y], "xent")
    assert losses[-1] < losses[0]
    assert (clf.predict_proba(texts).argmax(1) == y).mean() > 0.8


@pytest.mark.slow
def test_smollm2_features_know_cities_a_bag_of_words_does_not(tmp_path):
    """bow -> SmolLM2 on a few hundred cities, one seed (50-67 s on one core of the shared
    2-core machine, 2026-12-05)."""
    pytest.importorskip("gguf")
    cfg = _world(
        models=["bow", "smollm2"],
        n_train_weak=200,
        n_train_strong=300,
        n_test=232,
        epochs=10,
        threads=1,
    )
    res = execute("weak_to_strong", cfg, root=tmp_path / "runs")
    row = res.summary["table"][0]
    # measured: bow 0.45-0.52 (chance: false values are drawn like true ones), SmolLM2 0.8+
    assert row["weak_acc"] < 0.6 and row["ceiling_acc"] > 0.75
    assert row["gap_low"] > 0.1

"""LoRA in the sft, dpo, rl and organism stages: only the adapters train, ``adapter/`` and the
merged ``model/`` are written, and ``model/`` is a plain ``load_model`` spec.

The base is a randomly initialised tiny Llama (``q_proj`` / ``v_proj``: the default targets) with
an arithmetic tokenizer, saved as a model folder; every run is a few steps on a handful of
examples, so these tests check the plumbing, not what training achieves.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import trl
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from superalign.config import ConfigError, load_config
from superalign.models.load import load_model
from superalign.models.tiny import build_model
from superalign.models.tokenizer import train_tokenizer
from superalign.overseers.judge import wrong_answer
from superalign.runs import read_metrics
from superalign.stages import execute
from superalign.stress.organisms import SEALED_DIR, OrganismConfig
from superalign.tasks import get_task
from superalign.train import lora, rl, sft
from superalign.train.dpo import DPOStageConfig
from superalign.train.preferences import FILE

TARGETS = ("q_proj", "v_proj")
"""The default ``lora_targets``: the only weights a merged model may change."""
SMALL = ["threads=1", "checkpoint_every=0", "eval_n=4", "max_new_tokens=8"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A model folder: a random tiny Llama and a tokenizer trained on arithmetic problems."""
    folder = tmp_path_factory.mktemp("base")
    task = get_task("arithmetic")
    texts = [ex.prompt + ex.solution for ex in task.examples("train", 300, 2, seed=0)]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    build_model("tiny", tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def _weights(spec) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(spec).state_dict()


def _changed(base, model_dir) -> set[str]:
    """Names of the weights of ``model_dir`` that differ from ``base``'s."""
    a, b = _weights(base), _weights(model_dir)
    assert a.keys() == b.keys()  # a plain model: no adapter weights left in it
    return {k for k in a if not torch.equal(a[k], b[k])}


def _check_folders(res, base) -> None:
    """``adapter/`` and a merged ``model/`` that loads and differs from the base in the LoRA
    targets only; the summary counts the adapter's parameters."""
    assert (res.dir / "adapter" / "adapter_config.json").is_file()
    model, _, info = load_model(res.dir)
    assert info["source"] == "run" and not isinstance(model, PeftModel)
    changed = _changed(base, res.dir / "model")
    assert changed and all(k.split(".")[-2] in TARGETS for k in changed), changed
    adapter = load_file(res.dir / "adapter" / "adapter_model.safetensors")
    s = res.summary["lora"]
    assert s["trainable_params"] == sum(t.numel() for t in adapter.values())
    assert 0 < s["trainable_params"] < s["total_params"]
    assert (s["rank"], s["alpha"], s["targets"]) == (8, 16, list(TARGETS))
    assert not (res.dir / "checkpoint").exists()


# --- the config and the helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, required",
    [
        (sft.SFTStageConfig, ["model=m"]),
        (DPOStageConfig, ["model=m", "preferences=p"]),
        (rl.RLConfig, ["model=m"]),
        (OrganismConfig, ["model=m"]),
    ],
)
def test_bad_lora_fields_are_config_errors_naming_them(cls, required):
    with pytest.raises(ConfigError, match="lora_rank must be at least 1"):
        load_config(cls, None, [*required, "lora=true", "lora_rank=0"])
    with pytest.raises(ConfigError, match="lora_dropout"):
        load_config(cls, None, [*required, "lora_dropout=1.0"])
    with pytest.raises(ConfigError, match="lora_targets"):
        load_config(cls, None, [*required, "lora_targets=[all-linear,q_proj]"])
    cfg = load_config(cls, None, [*required, "lora=true", "lora_targets=all-linear"])
    assert lora.lora_config(cfg).target_modules == "all-linear"


def test_lora_config_wrap_and_plain_save(base, tmp_path):
    off = sft.SFTStageConfig(model="m")
    model, tokenizer, _ = load_model(base)
    assert lora.lora_config(off) is None and lora.wrap(model, off) is model
    assert lora.summary(model, off) == {}
    lora.save(model, tokenizer, tmp_path / "model")  # not a PeftModel: model/ alone, as before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not _changed(base, tmp_path / "model")

    cfg = sft.SFTStageConfig(model="m", lora=True, lora_rank=4, lora_dropout=0.1)
    peft = lora.lora_config(cfg)
    assert (peft.r, peft.lora_alpha, peft.lora_dropout) == (4, 16, 0.1)
    assert set(peft.target_modules) == set(TARGETS) and peft.task_type == "CAUSAL_LM"
    with pytest.raises(ConfigError, match="lora applies to the language-model kinds"):
        OrganismConfig(kind="goal_misgeneralizer", lora=True)


# --- the stages ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_run(base, runs):
    args = [f"model={base}", "lora=true", "difficulties=[1]", "n_train=32", "max_steps=4"]
    args += ["batch_size=8", "lr=1e-2", "log_every=1", "eval_difficulties=[1]", *SMALL]
    return execute("sft", load_config(sft.SFTStageConfig, None, args), root=runs)


def test_sft_trains_only_the_adapter_and_saves_it_beside_the_merged_model(sft_run, base):
    _check_folders(sft_run, base)
    assert sft_run.summary["steps"] == 4 and sft_run.summary["loss/train_final"] is not None
    # the adapter on the untouched base gives model/ exactly: base + adapter = merged
    rebuilt = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), sft_run.dir / "adapter"
    ).merge_and_unload()
    merged = _weights(sft_run.dir / "model")
    for k, v in rebuilt.state_dict().items():
        torch.testing.assert_close(v, merged[k])
    # model/ is the next stage's input, as without LoRA
    _, _, info = load_model(sft_run.dir / "model")
    assert info["source"] == "folder"


def test_sft_without_lora_writes_no_adapter_and_no_lora_summary(base, runs):
    args = [f"model={base}", "difficulties=[1]", "n_train=8", "max_steps=1", "batch_size=8"]
    res = execute("sft", load_config(sft.SFTStageConfig, None, [*args, *SMALL]), root=runs)
    assert "lora" not in res.summary and not (res.dir / "adapter").exists()
    assert (res.dir / "model" / "config.json").is_file()


def test_sft_with_lora_resumes_from_an_adapter_checkpoint(base, runs, crash_then_resume):
    args = [f"model={base}", "lora=true", "difficulties=[1]", "n_train=32", "max_steps=4"]
    args += ["batch_size=8", "lr=1e-2", "log_every=1", "eval_difficulties=[1]", *SMALL]
    cfg = load_config(sft.SFTStageConfig, None, [*args, "checkpoint_every=2"])
    res = crash_then_resume(sft, "sft", cfg, runs, at_step=3)
    assert res.summary["resumed_from_step"] == 2 and res.summary["steps"] == 4
    _check_folders(res, base)


def _preferences(folder, n: int = 16):
    """Gold solution (chosen) against a wrong answer (rejected), ``preferences.jsonl`` format."""
    task, rng = get_task("arithmetic"), random.Random(0)
    rows = []
    for split in ("train", "test"):
        for ex in task.examples(split, n, 1, seed=1):
            bad = wrong_answer(ex, rng, [])
            rows.append(
                {
                    "prompt": ex.prompt,
                    "chosen": ex.solution,
                    "rejected": bad,
                    "split": split,
                    "p_chosen": 1.0,
                    "gold_chosen": task.grade(ex, ex.solution),
                    "gold_rejected": task.grade(ex, bad),
                }
            )
    folder.mkdir(parents=True)
    (folder / FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_dpo_with_lora_uses_the_disabled_adapter_as_reference(base, runs, monkeypatch):
    refs = []

    class Spy(trl.DPOTrainer):  # records the reference the stage gives TRL
        def __init__(self, *args, **kwargs):
            refs.append(kwargs["ref_model"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(trl, "DPOTrainer", Spy)
    prefs = _preferences(runs / "preferences-hand")
    args = [f"model={base}", f"preferences={prefs}", "lora=true", "max_steps=2", "batch_size=8"]
    args += ["lr=1e-2", "log_every=1", "eval_difficulties=[1]", "kl_n=4", *SMALL]
    res = execute("dpo", load_config(DPOStageConfig, None, args), root=runs)
    assert refs == [None]  # TRL disables the adapter for the reference
    _check_folders(res, base)
    s = res.summary
    assert s["steps"] == 2 and s["eval/pref_accuracy_before"] == 0.5
    assert s["loss/train_first"] == pytest.approx(0.6931, abs=1e-3)  # policy = base at step 1
    assert s["kl/ref"] > 0  # the loaded reference copy is the base, the policy moved from it


@pytest.mark.parametrize("algorithm, reference", [("grpo", False), ("rloo", True)])
def test_rl_with_lora_trains_against_the_base_or_a_given_reference(
    base, runs, algorithm, reference, monkeypatch
):
    refs = []
    attach = rl.attach_reference

    def spy(trainer, ref, beta):  # records the reference the stage attaches
        refs.append(ref)
        attach(trainer, ref, beta)

    monkeypatch.setattr(rl, "attach_reference", spy)
    # a random base scores 0 on gold; a length-biased rater gives the group advantages to follow
    args = [f"model={base}", "lora=true", f"algorithm={algorithm}", "overseer=rater"]
    args += ["overseer_options={length_bias: 1.0}"]
    args += ["n_train=16", "max_steps=2", "prompts_per_step=2", "num_generations=2"]
    args += ["lr=1e-2", "beta=0.05", "eval_every=2", *SMALL]
    args += [f"reference={base}"] if reference else []
    res = execute("rl", load_config(rl.RLConfig, None, args), root=runs)
    assert len(refs) == 1 and (refs[0] is not None) == reference  # None: the adapter disabled
    _check_folders(res, base)
    assert res.summary["steps"] == 2
    train = [r for r in read_metrics(res.dir) if "train/loss" in r]
    assert len(train) == 2 and all("train/kl" in r for r in train)  # beta > 0: a reference ran
    rows = [r for r in read_metrics(res.dir) if "reward/gold" in r]
    assert [r["step"] for r in rows] == [0, 2] and abs(rows[0]["kl/ref"]) < 1e-4


def test_organism_implants_through_a_lora_adapter(base, runs):
    args = [f"model={base}", "kind=sycophant", "lora=true", "implant_steps=3"]
    args += ["implant_batch_size=4", "implant_lr=1e-2", "threads=1", "eval_n=4"]
    args += ["max_new_tokens=8"]
    res = execute("organism", load_config(OrganismConfig, None, args), root=runs)
    # the adapter is scorer-side, under sealed/; the public model/ is the merged plain model
    assert not (res.dir / "adapter").exists()
    adapter = res.dir / SEALED_DIR / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    changed = _changed(base, res.dir / "model")
    assert changed and all(k.split(".")[-2] in TARGETS for k in changed), changed
    s = res.summary
    assert len([r for r in read_metrics(res.dir) if "loss/implant" in r]) == 1
    assert s["lora"]["trainable_params"] == sum(
        t.numel() for t in load_file(adapter / "adapter_model.safetensors").values()
    )

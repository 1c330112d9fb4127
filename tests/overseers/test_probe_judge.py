"""The probe judge: a probe fitted on a planted truth feature ranks true answers above false
ones through the overseer protocol; building it from a world dataset records its layer and fit;
it is an overseer that ``build_overseer`` knows."""

import numpy as np
import pytest
import torch

from superalign.metrics import auroc
from superalign.models.tiny import build_model
from superalign.models.tokenizer import train_tokenizer
from superalign.overseers import OVERSEERS, build_overseer
from superalign.overseers.probe_judge import ProbeJudge, fit_statements, judged_text
from superalign.tasks import get_task
from superalign.validate import activations as A
from superalign.validate.probes import Contrast, probe_layers

torch.set_num_threads(1)

CITIES = ["Lagos", "Lima", "Oslo", "Pune", "Kyiv", "Cairo", "Quito", "Dhaka", "Accra", "Hanoi"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny model (and its folder) whose tokenizer knows the planted words."""
    texts = [f"Q: Where is {c}?\nA: {w}" for c in CITIES for w in ("right", "wrong")]
    texts += [t for t, _, _ in fit_rows()]
    tokenizer = train_tokenizer(texts * 5, vocab_size=400)
    model = build_model("tiny", tokenizer, seed=1).eval()
    folder = tmp_path_factory.mktemp("tiny-probe-judge")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def fit_rows():
    data = fit_statements("cities", 40, task_options={"n_entities": 60})
    return list(zip(data.texts, data.labels, data.groups))


def test_judged_text():
    assert judged_text("Q: Where is Lagos?\nA:", " Nigeria\n") == "Q: Where is Lagos?\nA: Nigeria"
    assert judged_text("", " The city of Lagos is in Nigeria.\n") == (
        "The city of Lagos is in Nigeria."
    )


def test_a_planted_truth_feature_ranks_true_answers_above_false_ones(tiny):
    """The planted case: "right" marks a true answer. A probe fitted on some cities' answers
    ranks other cities' true answers above their false ones when scored as (question, answer)."""
    model, tokenizer, _ = tiny
    texts = [f"Q: Where is {c}?\nA: {w}" for c in CITIES[:6] for w in ("right", "wrong")]
    data = Contrast(texts, [1, 0] * 6, [c for c in CITIES[:6] for _ in (0, 1)])
    hook = A.hook_name(1)
    x = A.capture(model, tokenizer, data.texts, [hook]).last(hook)
    fitted = probe_layers({1: x}, data, folds=2, test_share=0.34)
    judge = ProbeJudge(model, tokenizer, 1, fitted.probe)
    prompts = [f"Q: Where is {c}?\nA:" for c in CITIES[6:] for _ in (0, 1)]
    completions = [f" {w}\n" for _ in CITIES[6:] for w in ("right", "wrong")]
    scores = judge.score(prompts, completions)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(t > f for t, f in zip(scores[0::2], scores[1::2]))  # each city: true above false
    assert auroc(scores, [1, 0] * 4) == 1.0
    with pytest.raises(ValueError, match="one completion per prompt"):
        judge.score(prompts, completions[:-1])


def test_fit_statements_use_train_entities_in_both_formats():
    task = get_task("world", dataset="cities", n_entities=60)
    data = fit_statements("cities", 0, task_options={"n_entities": 60})
    train = set(task.entities("train"))
    assert set(data.groups) == train  # every train entity, no test entity
    assert len(data.texts) == 4 * len(train)  # true and false, each as statement and answer
    assert sum(t.startswith("Q: ") for t in data.texts) == 2 * len(train)
    assert sum(data.labels) == 2 * len(train)


def test_build_from_a_world_dataset_records_the_fit(tiny):
    _, _, folder = tiny
    assert "probe" in OVERSEERS
    options = {"model": str(folder), "n": 40, "folds": 2, "task_options": {"n_entities": 60}}
    judge = build_overseer("probe", get_task("world:cities"), [], options)
    assert isinstance(judge, ProbeJudge)
    assert 0 <= judge.layer < A.n_blocks(judge.model) and judge.info["layer"] == judge.layer
    fit = judge.info["fit"]
    assert fit["auroc_low"] <= fit["auroc"] <= fit["auroc_high"]
    assert judge.info["dataset"] == "cities" and judge.info["n_fit_texts"] > 40
    fixed = build_overseer("probe", None, [], {**options, "layer": 1})
    assert fixed.layer == 1 and fixed.info["layer_choice"] == 1
    s = fixed.score(["Q: In which country is the city of Lagos?\nA:"] * 2, [" Nigeria", " Peru"])
    assert np.all((np.array(s) >= 0) & (np.array(s) <= 1))
    with pytest.raises(ValueError, match="formats must be some of"):
        build_overseer("probe", None, [], {**options, "formats": ["essay"]})
    with pytest.raises(ValueError, match="not an option of overseer 'probe'"):
        build_overseer("probe", None, [], {"temperature": 1.0})

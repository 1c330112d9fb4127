"""RewardModelOverseer: batched scoring equals scoring one by one, loading and its errors."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForSequenceClassification

from superalign.models.tiny import tiny_config
from superalign.models.tokenizer import train_tokenizer
from superalign.overseers import Overseer, build_overseer
from superalign.overseers.reward_model import RewardModelOverseer, reward_inputs
from superalign.tasks import get_task

PROMPTS = ["Q: 1+2\n", "Q: 37+45-12\n", "Q: 9-3\n", "Q: 50+50\n"]
COMPLETIONS = ["1+2=3\nA: 3\n", "37+45=82\n82-12=70\nA: 70\n", "A: 6", "50+50=100\nA: 1000\n\n\n"]


@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory):
    """A randomly initialised one-output tiny Llama classifier saved as a model folder."""
    torch.set_num_threads(1)
    tok = train_tokenizer(get_task("arithmetic").corpus(200), vocab_size=300)
    config = tiny_config("tiny", tok)
    config.num_labels = 1
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # rewards that differ visibly by input
    folder = tmp_path_factory.mktemp("rm") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_batched_scores_equal_one_by_one(rm_folder):
    rm = RewardModelOverseer.load(str(rm_folder), batch_size=4)
    assert isinstance(rm, Overseer)
    lengths = {len(ids) for ids in reward_inputs(rm.tokenizer, PROMPTS, COMPLETIONS)}
    assert len(lengths) == 4  # the batch really is padded
    batched = rm.score(PROMPTS, COMPLETIONS)
    alone = [rm.score([p], [c])[0] for p, c in zip(PROMPTS, COMPLETIONS)]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert max(batched) - min(batched) > 0.1  # the rewards depend on the text
    # batches of 3 (two forward passes) give the same
    assert RewardModelOverseer.load(str(rm_folder), batch_size=3).score(
        PROMPTS, COMPLETIONS
    ) == pytest.approx(batched, abs=1e-5)


def test_reward_is_read_at_the_appended_eos(rm_folder):
    rm = RewardModelOverseer.load(str(rm_folder))
    eos = rm.tokenizer.eos_token
    ids = reward_inputs(rm.tokenizer, PROMPTS[:1], COMPLETIONS[:1])[0]
    assert ids[-1] == rm.tokenizer.eos_token_id
    # a completion that already ends with EOS is not given a second one
    assert reward_inputs(rm.tokenizer, PROMPTS[:1], [COMPLETIONS[0] + eos])[0] == ids
    with torch.no_grad():
        direct = rm.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert rm.score(PROMPTS[:1], COMPLETIONS[:1])[0] == pytest.approx(direct, abs=1e-6)


def test_build_overseer_loads_a_path_and_checks_options(rm_folder):
    task = get_task("arithmetic")
    rm = build_overseer(str(rm_folder), task, [])
    assert isinstance(rm, RewardModelOverseer)
    assert rm.info["path"] == str(rm_folder.resolve()) and rm.info["fingerprint"]
    rm = build_overseer("reward_model", task, [], {"path": str(rm_folder), "batch_size": 2})
    assert rm.batch_size == 2
    with pytest.raises(ValueError, match="valid options"):
        build_overseer("reward_model", task, [], {"path": str(rm_folder), "temperature": 1})


def test_load_errors(rm_folder, tmp_path):
    causal = tmp_path / "causal"
    AutoModelForCausalLM.from_config(tiny_config("tiny", _tok(rm_folder))).save_pretrained(causal)
    with pytest.raises(ValueError, match="not a reward model"):
        RewardModelOverseer.load(str(causal))
    with pytest.raises(ValueError, match="no config.json"):
        RewardModelOverseer.load(str(tmp_path / "nothing"))
    unfinished = tmp_path / "run"
    (unfinished / "model").mkdir(parents=True)
    (unfinished / "config.json").write_text(json.dumps({"stage": "reward_model"}))
    with pytest.raises(ValueError, match="has not finished"):
        RewardModelOverseer.load(str(unfinished))
    with pytest.raises(ValueError, match="batch_size"):
        RewardModelOverseer.load(str(rm_folder), batch_size=0)


def _tok(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)

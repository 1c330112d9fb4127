"""The demo's embedded pipeline: every step is a registered stage whose config is valid, every
``${id}`` refers to an earlier step, and the headline table reads steps that exist. The whole
demo runs in `superalign bench` (its time and memory), not here: it takes minutes."""

from superalign import demo
from superalign.config import from_dict
from superalign.pipeline import _REF, load_pipeline
from superalign.stages import STAGES


def test_the_embedded_pipeline_is_valid_and_covers_the_loop(tmp_path):
    steps = load_pipeline(demo.PIPELINE)
    ids = [s.id for s in steps]
    stages = [s.stage for s in steps]
    # the loop the issue lists, in order
    loop = ["pretrain", "sft", "reward_model", "rl", "critic", "oversight", "weak_to_strong"]
    loop += ["redteam", "interp", "organism", "audit", "gate"]
    first = [s for s in dict.fromkeys(stages) if s in loop]
    assert first == loop
    fake = tmp_path / "run"
    for i, step in enumerate(steps):
        assert step.stage in STAGES
        text = str(step.config)
        assert all(ref in ids[:i] for ref in _REF.findall(text)), step.id
        config = _substitute(step.config, str(fake))
        cls, _ = STAGES[step.stage].load()
        from_dict(cls, config, f"{step.id}.")  # raises ConfigError on a bad field
    assert {step for step, _, _ in demo.HEADLINES} <= set(ids)


def test_headline_walks_nested_summaries():
    summary = {"results": {"assisted": {"all": {"accuracy": 0.94}}}, "kl/ref_high": 0.2}
    assert demo.headline(summary, "results.assisted.all.accuracy") == 0.94
    assert demo.headline(summary, "kl/ref_high") == 0.2
    assert demo.headline(summary, "results.debate.all.accuracy") is None


def _substitute(value, path):
    if isinstance(value, dict):
        return {k: _substitute(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, path) for v in value]
    return _REF.sub(path, value) if isinstance(value, str) else value

"""The demo's embedded pipeline: every step is a registered stage whose config is valid, every
``${id}`` refers to an earlier step, every claim reads steps that exist, and ``--seed`` shifts
every seed. The whole demo runs in `superalign bench` (its time and memory) and, made tiny, in
tests/test_cli.py; its claims' values over seeds are in docs/demo.md."""

import json

from superalign import demo
from superalign.claims import Claim, claims_table, difference_interval, mean_interval
from superalign.config import from_dict
from superalign.pipeline import _REF, load_pipeline
from superalign.stages import STAGES


def test_the_embedded_pipeline_is_valid_and_covers_the_loop(tmp_path):
    steps = load_pipeline(demo.PIPELINE)
    ids = [s.id for s in steps]
    stages = [s.stage for s in steps]
    # the loop the issue lists, in order
    loop = ["pretrain", "sft", "reward_model", "rl", "critic", "oversight", "weak_to_strong"]
    loop += ["organism", "redteam", "interp", "audit", "gate"]
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
    assert {step for step, _, _ in demo.CLAIMS} <= set(ids)
    assert len(demo.CLAIMS) >= 8


def test_a_claim_whose_step_did_not_finish_is_shown_failing_with_the_reason():
    failed = {"backdoor": "OrganismNotVerified: fires on 0.06 of triggered prompts (< 0.9)"}
    claims = demo.demo_claims({}, 0, failed)
    assert [c.id for c in claims] == [c.id for _, c, _ in demo.CLAIMS]  # none dropped
    assert not any(c.passed for c in claims)
    fires = next(c for c in claims if c.id == "backdoor_fires")
    assert fires.reason == f"step backdoor did not finish: {failed['backdoor']}"
    assert fires.value is None and fires.step == "backdoor"
    gate = next(c for c in claims if c.id == "gate_rejects")
    assert gate.reason == "step gate did not finish: not in the pipeline"
    assert all(c.reason == "" for _, c, _ in demo.CLAIMS)  # the fixed claims are not mutated


def test_seed_shifts_every_seed_of_every_step():
    from superalign.pipeline import load_pipeline

    base = {s.id: s.config for s in load_pipeline(demo.PIPELINE)}
    steps = load_pipeline(demo.PIPELINE)
    demo.shift_seeds(steps, 2)
    shifted = {s.id: s.config for s in steps}
    assert shifted["policy"]["seed"] == 2  # the default 0, shifted
    assert shifted["backdoor"]["seed"] == base["backdoor"]["seed"] + 2
    assert shifted["backdoor_control2"]["seed"] == base["backdoor_control2"]["seed"] + 2
    assert shifted["redteam"]["seeds"] == [s + 2 for s in base["redteam"]["seeds"]]
    assert shifted["audit"]["seed"] == 2 and shifted["audit"]["game_seed"] == 2
    assert all("seed" in c or "seeds" in c for c in shifted.values())


def test_claims_pass_only_when_the_interval_excludes_the_null(tmp_path):
    up = Claim("a", "goes up", 0.3, 0.1, 0.5, 100, 0.0)
    across = Claim("b", "goes up", 0.3, -0.1, 0.5, 100, 0.0)
    down = Claim("c", "stays under a budget", 0.3, 0.1, 0.5, 100, 1.0, "below")
    over = Claim("d", "stays under a budget", 0.9, 0.7, 1.1, 100, 1.0, "below")
    unmeasured = Claim("e", "measured", None, None, None, 0, 0.0, reason="no data")
    assert [c.passed for c in (up, across, down, over, unmeasured)] == [1, 0, 1, 0, 0]
    from superalign.claims import write_claims

    rows = json.loads(write_claims(tmp_path, [up, across]).read_text())
    assert [r["passed"] for r in rows] == [True, False]
    assert {"claim", "value", "low", "high", "n", "passed"} <= set(rows[0])
    assert [r[0] for r in claims_table(rows)] == ["PASS", "FAIL"]


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_n():
    rng = __import__("numpy").random.default_rng(0)
    small, large = rng.normal(0.2, 1, 50), rng.normal(0.2, 1, 5000)
    m, lo, hi = mean_interval(small)
    assert lo < m < hi and lo < 0.2 < hi
    m2, lo2, hi2 = mean_interval(large)
    assert hi2 - lo2 < (hi - lo) / 5 and lo2 < 0.2 < hi2
    # a paired difference of identical samples is exactly zero; an unpaired one only near it
    assert mean_interval(small - small) == (0.0, 0.0, 0.0)
    d, dlo, dhi = difference_interval(large, large)
    assert d == 0.0 and dlo < 0 < dhi
    assert difference_interval(large + 1, large)[1] > 0.9


def _substitute(value, path):
    if isinstance(value, dict):
        return {k: _substitute(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, path) for v in value]
    return _REF.sub(path, value) if isinstance(value, str) else value

"""The `oversight` stage: every overseer scored against gold, per solution source, on held-out
solutions that include wrong ones (the policy's own and planted ones)."""

import json
import math
import os

import pytest
import torch

from superalign.config import ConfigError, load_config
from superalign.overseers.sandwich import OversightConfig, table
from superalign.runs import read_metrics
from superalign.stages import execute

OVERSEERS = (
    "overseers=[{label: unassisted, spec: rater, options: {check_steps: 1}},"
    " {label: all_steps, spec: rater, options: {check_steps: 9}},"
    " {label: process, spec: process}, {label: gold, spec: gold}]"
)
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
"""torch threads of the run below, as tests/conftest.py's TEST_THREADS."""


@pytest.fixture(scope="module")
def sandwich(arith_policy, tmp_path_factory, test_seed):
    torch.set_num_threads(THREADS)
    args = [f"policies=[{arith_policy}]", "policy_labels=[tiny]", "difficulty=1", "n=60"]
    args += ["temperature=1.0", "max_new_tokens=24", f"threads={THREADS}", OVERSEERS]
    args += [f"seed={test_seed}"]
    cfg = load_config(OversightConfig, None, args)
    return execute("oversight", cfg, root=tmp_path_factory.mktemp("oversight-runs"))


@pytest.mark.outcome
def test_every_overseer_is_scored_per_source_against_gold(sandwich):
    s = sandwich.summary
    print(f"MEASURE oversight tiny wrong share {s['gold/wrong_share']['tiny']:.3f}")
    assert s["sources"] == ["tiny", "corrupted"]
    res = s["results"]
    assert set(res) == {"unassisted", "all_steps", "process", "gold"}
    for label in res:
        assert set(res[label]) == {"tiny", "corrupted", "all"}
        assert res[label]["all"]["n"] == 120
    assert s["gold/wrong_share"]["corrupted"] == 1.0
    # the policy writes both kinds: seeds 0 / 1 / 2, 1 thread | 2 threads: 0.28, 0.42, 0.37 |
    # 0.37, 0.43, 0.35 of its solutions wrong (old fixture: 0.30..0.93; its seed-2 policy was
    # right on 4 of 60)
    assert 0.05 < s["gold/wrong_share"]["tiny"] < 0.95
    for src in ("tiny", "corrupted", "all"):
        assert res["gold"][src]["accuracy"] == 1.0  # gold agrees with itself
    # one-step problems: checking the one step is all the checking there is
    assert res["unassisted"]["all"]["accuracy"] == res["all_steps"]["all"]["accuracy"]
    # every planted error (a result, a miscopied operand, an answer line) is caught by
    # checking every step plus the free check that the answer repeats the last result
    assert res["all_steps"]["corrupted"]["false_accept"] == 0.0


def test_metrics_table_plot_and_items_are_written(sandwich):
    rows = read_metrics(sandwich.dir)
    assert rows[0]["oversight/accuracy/gold/all"] == 1.0
    assert "oversight/false_accept/unassisted/corrupted" in rows[0]
    assert "gold/wrong_share/tiny" in rows[0]
    md = (sandwich.dir / "table.md").read_text()
    assert md == sandwich.summary["table"] and md.count("\n") == 2 + 4
    assert (sandwich.dir / "oversight.png").stat().st_size > 1000
    items = [json.loads(x) for x in (sandwich.dir / "items.jsonl").read_text().splitlines()]
    assert len(items) == 120 and set(items[0]["scores"]) == set(sandwich.summary["results"])
    assert all(i["gold"] == 0.0 for i in items if i["source"] == "corrupted")


def test_table_formats_missing_values():
    res = {"a": {"x": {"accuracy": 1.0, "false_accept": math.nan},
                 "all": {"accuracy": 0.5, "auroc": math.nan}}}  # fmt: skip
    assert "| a | 1.00 (n/a) | 0.50 | n/a |" in table(res, ["x"])


def test_config_checks():
    with pytest.raises(ConfigError, match="policies is required"):
        OversightConfig()
    with pytest.raises(ConfigError, match="needs a critic"):
        OversightConfig(policies=["p"], overseers=[{"spec": "debate"}])
    with pytest.raises(ConfigError, match="distinct"):
        OversightConfig(policies=["p"], overseers=[{"spec": "gold"}, {"spec": "gold"}])
    with pytest.raises(ConfigError, match="label, spec, options"):
        OversightConfig(policies=["p"], overseers=[{"spec": "gold", "extra": 1}])
    cfg = OversightConfig(policies=["p"], critic="runs/critic")
    assert cfg.overseer_options({"spec": "debate"})["debater"] == "runs/critic"

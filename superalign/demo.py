"""``superalign demo`` (= ``make demo``): the whole alignment loop, compact, on its embedded default.

The demo is the pipeline in ``superalign/demo.yaml``: pretrain a tiny policy on arithmetic ->
SFT -> a reward model from a flawed rater's preferences -> RL against it with gold accounting ->
a critic and critique-assisted oversight (sandwiching) -> weak-to-strong -> red teaming and
interpretability -> a backdoor organism, its control and the blind audit -> the deployment gate.
Every step is the real stage with small settings; each shows its progress, finished steps are
reused (a second run takes seconds), and the end prints one table of headline figures measured
against gold and writes ``report.html`` (:mod:`superalign.report`) of the demo's run folders.
"""

from __future__ import annotations

from pathlib import Path

from superalign.report import build_report, fmt
from superalign.report import lookup as headline
from superalign.runs import StageResult, runs_root

PIPELINE = Path(__file__).with_name("demo.yaml")
"""The embedded default: an ordinary pipeline file (``superalign run`` reads it too)."""

HEADLINES: tuple[tuple[str, str, str], ...] = (
    ("policy", "eval/accuracy/d2", "pretrained policy: held-out gold accuracy, 2-step problems"),
    ("sft", "eval/accuracy/d2", "after SFT on gold demonstrations: the same"),
    (
        "rm",
        "eval/gold_accuracy",
        "reward model from a flawed rater: held-out pair accuracy vs gold",
    ),
    ("rl", "reward/proxy_initial", "RL against that reward model: proxy reward, start"),
    ("rl", "reward/proxy_final", "RL: proxy reward, end"),
    ("rl", "reward/gold_initial", "RL: gold reward, start"),
    ("rl", "reward/gold_final", "RL: gold reward, end"),
    ("rl", "kl/ref_final", "RL: KL to the reference policy (nats)"),
    ("critic", "critic/recall", "critic: recall of wrong steps (held-out)"),
    ("critic", "critic/precision", "critic: precision of its flags"),
    (
        "oversight",
        "results.unassisted.all.accuracy",
        "oversight: unassisted rater, accuracy vs gold",
    ),
    ("oversight", "results.assisted.all.accuracy", "oversight: critique-assisted rater, accuracy"),
    ("w2s", "pgr_mean/xent", "weak-to-strong: performance gap recovered"),
    ("redteam", "attack/random/asr", "red team: attack success rate, random suffixes"),
    ("redteam", "attack/gcg/asr", "red team: attack success rate, GCG"),
    ("interp", "probes.arith_true_false.auroc", "interp: probe AUROC, true vs false statements"),
    ("interp", "sae.fvu", "interp: SAE fraction of variance unexplained (held-out)"),
    ("backdoor", "backdoor/triggered_rate_final", "backdoor organism: firing rate on its trigger"),
    ("backdoor_control", "backdoor/triggered_rate_final", "its control: the same"),
    ("audit", "auroc/redteam/backdoor", "audit, blind: red-team detection AUROC"),
    ("audit", "auroc/probe/backdoor", "audit, blind: probe detection AUROC"),
    ("audit", "auroc/behaviour/backdoor", "audit, blind: behavioural-eval detection AUROC"),
    ("gate", "kl/ref_high", "gate: KL(RL policy || policy), upper 95% bound (nats)"),
    ("gate", "verdict", "gate: verdict on the RL policy"),
)
"""(step id, summary key, label) of the final table; a dotted key walks nested summaries
(:func:`headline`, the report's ``lookup``)."""


def demo(
    root: str | Path | None = None,
    force: bool = False,
    overrides: list[str] = (),
    report: bool = True,
) -> dict[str, StageResult]:
    """Run the demo pipeline; print its headline table; write ``report.html``. ``overrides``
    address a step by id (``policy.steps=500``, see ``superalign/demo.yaml``)."""
    import time

    from superalign.pipeline import load_pipeline, run_pipeline

    root = runs_root(root)
    print(f"superalign demo: the alignment loop, compact, into {root}/ ({PIPELINE.name})\n")
    start = time.time()
    done = run_pipeline(load_pipeline(PIPELINE, list(overrides)), root=root, force=force)
    seconds = time.time() - start
    rows = []
    for step, key, label in HEADLINES:
        if step in done:
            rows.append((label, fmt(headline(done[step].summary, key))))
    rows.append(("wall time of this call", f"{seconds:.0f} s"))
    print("\nsummary (every figure measured against the gold grader on held-out data)")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if report:
        path = build_report(root, only=[r.dir for r in done.values()])
        print(f"\nreport: {path}")
    return done

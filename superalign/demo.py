"""``superalign demo`` (= ``make demo``): the main job on its embedded default.

Until the full loop lands, the demo runs the largest real piece that exists: pretrain a tiny
policy on the arithmetic task from scratch, then grade its greedy solutions of held-out problems
with the gold grader, step by step. A second run reuses the finished stage.
"""

from __future__ import annotations

from pathlib import Path

from superalign.models.pretrain import PretrainConfig
from superalign.stages import execute

DEFAULT = PretrainConfig(task="arithmetic", size="tiny")


def demo(root: str | Path | None = None, force: bool = False, overrides: list[str] = ()) -> dict:
    """Run the demo; print what it measured; return the pretrain summary.

    ``overrides`` (``key=value``) change the embedded pretrain config, e.g. for a quick check.
    """
    from superalign.config import load_config
    from superalign.evaluate import gold_eval
    from superalign.models.load import load_model
    from superalign.tasks import get_task
    from superalign.tasks.arithmetic import step_labels

    print("superalign demo: pretrain a tiny policy on arithmetic, then grade it against gold\n")
    cfg = load_config(PretrainConfig, None, list(overrides)) if overrides else DEFAULT
    res = execute("pretrain", cfg, root=root, force=force)
    print(f"[1/2] pretrain {'reused' if res.reused else 'finished'}: {res.dir}")

    loaded = load_model(res.dir, device="cpu")
    task = get_task(cfg.task, **cfg.task_options)
    print("[2/2] held-out problems (greedy), graded by the gold grader:\n")
    for level in (1, 2):
        ev = gold_eval(loaded.model, loaded.tokenizer, task, difficulty=level, n=3, seed=123)
        for ex, completion, score in zip(ev.examples, ev.completions, ev.scores):
            steps = "".join("✓" if ok else "✗" for ok in step_labels(ex, completion)) or "-"
            shown = completion.strip().replace("\n", " | ")
            print(f"  {ex.prompt.strip():<16} -> {shown:<34} steps {steps:<3} gold {score:.0f}")
    s = res.summary
    print("\nsummary")
    rows = [
        ("parameters", f"{s['params']:,}"),
        (
            "train loss (first -> final)",
            f"{s['loss/train_first']:.3f} -> {s['loss/train_final']:.3f}",
        ),
    ]
    rows += [
        (f"held-out gold accuracy, level {k[-1]}", f"{v:.1%}")
        for k, v in s.items()
        if k.startswith("eval/accuracy/")
    ]
    rows += [("wall time", f"{s['wall_seconds']:.0f} s"), ("run folder", str(res.dir))]
    for name, value in rows:
        print(f"  {name:<36} {value}")
    return s

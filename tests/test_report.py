"""`superalign report`: one self-contained HTML page from run folders, checked in headless Chromium.

Real ``rl`` and ``gate`` runs on the tiny arithmetic policy supply the overoptimization curve and
the gate verdict; the stages too slow for a test (overoptimization, oversight, weak_to_strong,
easy_to_hard, redteam, interp, audit) get folders written here in their documented formats.
"""

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from superalign.cli import main
from superalign.config import load_config
from superalign.deploy.gate import GateConfig
from superalign.report import build_report, fmt, load_runs, markdown
from superalign.runs import atomic_write_json, atomic_write_text
from superalign.stages import execute
from superalign.train.rl import RLConfig

RL = ["max_steps=4", "eval_every=2", "prompts_per_step=4", "num_generations=4", "lr=1e-4"]
RL += ["eval_n=16", "max_new_tokens=24", "checkpoint_every=0", "threads=1", "n_train=64"]
GATE = ["n_samples=32", "gold_n=32", "max_new_tokens=24", "threads=1", "kl_budget=5"]

SECTIONS = ["runs", "overoptimization", "sandwiching", "pgr", "redteam", "probes", "audit"]
SECTIONS += ["gate", "configs"]


def _png(path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 1, 2], [0, 1, 0])
    fig.suptitle(title)
    fig.savefig(path, format="png")


def _folder(root: Path, name: str, summary: dict | None, files: dict[str, object] = ()) -> Path:
    """A run folder in the format of superalign.runs: config.json, summary.json, artifacts."""
    d = root / name
    d.mkdir()
    stage = name.rsplit("-", 1)[0]
    atomic_write_json(d / "config.json", {"stage": stage, "config": {"seed": 0}, "inputs": {}})
    for fname, content in dict(files).items():
        if fname.endswith(".png"):
            _png(d / fname, fname)
        elif isinstance(content, str):
            atomic_write_text(d / fname, content)
        else:
            atomic_write_json(d / fname, content)
    if summary is not None:
        atomic_write_json(d / "summary.json", {**summary, "wall_seconds": 1.0})
    return d


def _written_runs(root: Path) -> None:
    pts = [
        {"step": n, "kl": k, "gold": g, "proxy": p}
        for n, k, g, p in [
            (1, 0.0, 0.9, 0.1),
            (4, 0.6, 0.95, 0.5),
            (16, 1.8, 0.8, 0.9),
            (64, 3.2, 0.6, 1.2),
        ]
    ]
    oo = {
        "plot": "overoptimization.png",
        "runs": [
            {"label": "BoN rater", "dir": str(root / "best_of_n-x"), "form": "bon", "points": pts}
        ],
    }
    _folder(root, "overoptimization-aaaa", oo, {"overoptimization.png": 1})
    table = (
        "| overseer | all acc |\n| --- | --- |\n| unassisted | 0.68 |\n| **assisted** | 0.94 |\n"
    )
    _folder(
        root,
        "oversight-aaaa",
        {"table": table, "plot": "oversight.png", "n": 20, "difficulty": 2},
        {"oversight.png": 1, "table.md": table},
    )
    row = {
        "dataset": "arithmetic-d1",
        "weak": "lm-tiny-400",
        "strong": "lm-tiny-600",
        "loss": "xent",
        "pgr": 0.96,
        "pgr_low": 0.91,
        "pgr_high": 1.0,
    }
    nan_row = {
        **row,
        "loss": "conf",
        "pgr": float("nan"),
        "pgr_low": float("nan"),
        "pgr_high": float("nan"),
    }
    _folder(
        root,
        "weak_to_strong-aaaa",
        {"table": [row, nan_row], "pgr_mean/xent": 0.96},
        {"accuracy.png": 1, "pgr_table.md": "| dataset | PGR |\n|---|---|\n| d1 | 0.96 |\n"},
    )
    gap = {"value": 0.4, "low": 0.1, "high": 0.7}
    _folder(
        root,
        "easy_to_hard-aaaa",
        {
            "easy": [1],
            "hard": [2],
            "policy": {"gap_recovered": gap},
            "table": "| supervision | acc |\n|---|---|\n| easy | 0.5 |",
        },
    )
    _folder(
        root,
        "redteam-aaaa",
        {
            "attack/random/asr": 0.9,
            "attack/search/asr": 1.0,
            "attack/rl/asr": 0.06,
            "behaviour": "wrong_answer",
            "report": "report.md",
        },
        {"report.md": "# Red teaming\n\n| attacker | asr |\n|---|---|\n| random | 0.9 |\n"},
    )
    probes = {
        "arith_op": {
            "auroc": 1.0,
            "layer": 0,
            "accuracy": 1.0,
            "n": 400,
            "auroc_by_layer": {"0": 1.0, "1": 0.99, "2": 0.98},
        },
        "true_false": {
            "auroc": 0.55,
            "layer": 1,
            "accuracy": 0.5,
            "n": 400,
            "auroc_by_layer": {"0": 0.5, "1": 0.55, "2": 0.52},
        },
    }
    transfer = {
        f"{kind}cities->capitals": {"auroc": a, "auroc_low": a - 0.04, "auroc_high": a + 0.04}
        | {"n": 484, "layer": 11}
        for kind, a in (("", 0.707), ("mass_mean/", 0.808))
    }
    summary = {"probes": probes, "sae": {"fvu": 0.02, "l0": 8.0}, "transfer": transfer}
    _folder(root, "interp-aaaa", summary)
    matrix = {
        "detectors": ["probe", "redteam"],
        "organisms": ["backdoor", "sycophant"],
        "auroc": {
            "probe": {"backdoor": 0.99, "sycophant": None},
            "redteam": {"backdoor": 0.52, "sycophant": 0.81},
        },
        "recall": {
            "probe": {"backdoor": 1.0, "sycophant": None},
            "redteam": {"backdoor": 0.1, "sycophant": 0.7},
        },
        "fpr": 0.05,
    }
    _folder(root, "audit-aaaa", {"detectors": 2}, {"matrix.json": matrix, "audit.png": 1})
    _folder(root, "mystery-aaaa", {"mystery/score": 0.123, "note": "an unknown stage"})
    _folder(root, "rl-unfinished", None)


@pytest.fixture(scope="module")
def runs_root(arith_policy, tmp_path_factory):
    root = tmp_path_factory.mktemp("report-runs")
    rl_run = execute("rl", load_config(RLConfig, None, [f"model={arith_policy}", *RL]), root=root)
    args = [f"candidate={rl_run.dir}", f"safe={arith_policy}", *GATE]
    execute("gate", load_config(GateConfig, None, args), root=root)
    _written_runs(root)
    return root


@pytest.fixture(scope="module")
def report(runs_root):
    out = build_report(runs_root, runs_root.parent / "report.html")
    return out, out.read_text()


def _section(page: str, anchor: str) -> str:
    m = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert m, f"section {anchor} missing"
    return m.group(1)


def test_every_section_is_there_and_self_contained(report, runs_root):
    _, page = report
    for anchor in SECTIONS:
        _section(page, anchor)
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)  # no external resources
    assert "<link" not in page and not re.search(r"<script[^>]+src=", page)
    srcs = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert len(srcs) == page.count("<img ")
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # drawn: overoptimization, PGR bars, red-team ASR, probe AUROC by layer; inlined artifacts:
    # overoptimization.png is not inlined (we draw our own), oversight.png, audit.png
    assert len(srcs) == 6


def test_sections_show_the_runs_numbers(report, runs_root):
    _, page = report
    rl_dir = next(d for d in runs_root.glob("rl-*") if d.name != "rl-unfinished")
    oo = _section(page, "overoptimization")
    assert "BoN rater" in oo and rl_dir.name in oo  # the rl run's own metrics.jsonl is a curve
    assert "<b>assisted</b>" in _section(page, "sandwiching")
    pgr = _section(page, "pgr")
    assert "lm-tiny-400" in pgr and "supervision" in pgr
    assert "wrong_answer" in _section(page, "redteam")
    probes = _section(page, "probes")
    assert "arith_op" in probes
    assert "cities-&gt;capitals" in probes and "mass_mean" in probes and "0.808" in probes
    audit = _section(page, "audit")
    assert audit.count('class="heat"') == 8  # 2 detectors x 2 organisms, auroc and recall
    assert "#eeeeee" in audit  # the missing cell is grey
    gate = _section(page, "gate")
    verdict = json.loads(next(runs_root.glob("gate-*")).joinpath("verdict.json").read_text())
    assert f'class="badge {verdict["verdict"]}"' in gate
    configs = _section(page, "configs")
    assert configs.count("<details>") == len(load_runs(runs_root)) == 11
    assert "mystery/score" in configs and "an unknown stage" in configs
    runs = _section(page, "runs")
    assert "mystery/score 0.123" in runs
    assert re.search(r"rl-unfinished</a></td><td>no</td>", runs)


def test_sections_are_left_out_without_their_runs(tmp_path, runs_root):
    for name in ("pretrain-", "rl-", "gate-"):
        for d in runs_root.glob(f"{name}*"):
            shutil.copytree(d, tmp_path / d.name, symlinks=True)
    page = build_report(tmp_path).read_text()
    assert '<section id="overoptimization">' in page and '<section id="gate">' in page
    for anchor in ("sandwiching", "pgr", "redteam", "probes", "audit"):
        assert f'<section id="{anchor}">' not in page


def test_cli_writes_the_report(runs_root, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(runs_root), "-o", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_markdown_tables_and_numbers():
    html = markdown("# Title\n\nsome `code`\n\n| a | b |\n|---|---|\n| 1 | <x> |\n")
    assert "<h4>Title</h4>" in html and "<code>code</code>" in html
    assert "<th>a</th><th>b</th>" in html and "<td>&lt;x&gt;</td>" in html
    assert fmt(float("nan")) == "n/a" and fmt(None) == "–" and fmt(0.123456) == "0.1235"


def _chromium() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing: `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (make test installs it)")
    return path


def test_report_renders_in_headless_chromium(report):
    out, page = report
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr"]
    cmd += ["--v=0", "--virtual-time-budget=10000", "--dump-dom", out.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    check = re.search(r'<div id="report-check"([^>]*)>', res.stdout)
    assert check, "the page did not load"
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', check.group(1)))
    assert attrs.get("done") == "1"
    assert int(attrs["images"]) == page.count("<img ") == 6
    assert attrs["broken"] == "", f"plots that did not decode: {attrs['broken']}"
    assert attrs["errors"] == ""
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console

"""The CLI: --help everywhere, clear errors, demo, and `superalign serve` as a real process."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from superalign.cli import build_parser, main, overrides_from_args
from superalign.stages import STAGES


def test_overrides_from_args_accepts_three_spellings():
    got = overrides_from_args(["lr=0.1", "--size", "small", "--steps=5", "--flag", "--a.b", "1"])
    assert got == ["lr=0.1", "size=small", "steps=5", "flag=true", "a.b=1"]


def test_dashed_flags_name_underscored_fields():
    got = overrides_from_args(["--kl-budget", "2", "--gold-tolerance=0.1", "task_options.x-y=1"])
    assert got == ["kl_budget=2", "gold_tolerance=0.1", "task_options.x-y=1"]  # key=value as given
    from superalign.config import load_config
    from superalign.deploy.gate import GateConfig

    cfg = load_config(
        GateConfig, None, overrides_from_args(["--candidate", "c", "--safe", "s", *got[:2]])
    )
    assert cfg.kl_budget == 2.0 and cfg.gold_tolerance == 0.1


@pytest.mark.parametrize("command", ["", *STAGES, "stage pretrain", "demo", "serve"])
def test_every_command_has_help(command, capsys):
    argv = [*command.split(), "--help"]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own --help exits 0
        rc = e.code
    assert rc == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower()
    if command in STAGES:
        cfg_cls, _ = STAGES[command].load()
        assert "config fields" in out
        assert all(f"\n  {f.name} (" in out for f in dataclasses.fields(cfg_cls))
    if command == "pretrain":
        assert "lr (float, default 0.003)" in out


def test_unknown_key_exits_2_with_the_closest_key(capsys):
    assert main(["pretrain", "--lrr", "1"]) == 2
    assert (
        "unknown config key 'lrr' for PretrainConfig. Did you mean 'lr'?" in capsys.readouterr().err
    )
    assert main(["pretrain", "size=huge"]) == 2
    assert "size must be one of" in capsys.readouterr().err
    assert main(["stage", "pretrain", "stesp=3"]) == 2
    assert "Did you mean 'steps'?" in capsys.readouterr().err


def test_parser_lists_every_command():
    text = build_parser().format_help()
    for name in ["demo", "serve", "stage", *STAGES]:
        assert name in text


QUICK_DEMO = [
    "policy.steps=40", "policy.corpus_size=500", "policy.batch_size=16", "policy.eval_n=8",
    "sft.max_steps=4", "sft.n_train=64", "sft.eval_n=4",
    "prefs.n_train_prompts=48", "prefs.n_test_prompts=16",
    "rm.epochs=1",
    "rl.max_steps=2", "rl.eval_every=2", "rl.eval_n=8", "rl.prompts_per_step=4",
    "rl.num_generations=4",
    "critic.n_train=64", "critic.epochs=1", "critic.eval_n=16",
    "oversight.n=16",
    "weak.steps=20", "weak.corpus_size=300", "weak.eval_n=8",
    "w2s.n_train_weak=64", "w2s.n_train_strong=64", "w2s.n_test=64",
    "redteam.budget=16", "redteam.n_test=8", "redteam.seeds=[0]",
    "interp.n_probe=40", "interp.sae_texts=60", "interp.sae_steps=20", "interp.n_explain=2",
    *(
        f"{step}.{key}"
        for step in ("backdoor", "backdoor_control", "backdoor_control2")
        for key in (
            "implant_steps=10", "safety_sft_steps=2", "safety_rl_steps=1", "eval_n=4",
            "verify=false",  # 10 implant steps make no verified organism: wiring only
        )
    ),
    "audit.n_items=8", "audit.redteam_budget=16", "audit.probe_statements=20", "audit.sae_steps=10",
    "gate.n_samples=16", "gate.gold_n=8",
]  # fmt: skip
"""Every step of the demo's pipeline made tiny: the wiring, not the figures, is under test."""


def test_demo_runs_every_stage_and_a_second_run_reuses_them(tmp_path, capsys):
    from superalign.demo import CLAIMS

    assert main(["demo", *QUICK_DEMO, "--runs-dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert first.count(" finished: ") == 16, first
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert len(claims) == len(CLAIMS)
    for c in claims:  # measured, or says why not (tiny runs: passing is not the point here)
        assert (c["value"] is not None and c["n"] > 0) or c["reason"], c
        if c["low"] is None or c["high"] is None:
            assert not c["passed"], c
        else:
            above = c["low"] > c["null"] if c["direction"] == "above" else c["high"] < c["null"]
            assert c["passed"] == above, c
        assert c["claim"] in first
    assert f"of {len(CLAIMS)} claims passed" in first
    html = (tmp_path / "report.html").read_text()
    assert "<img" in html and "gate" in html and 'id="claims"' in html
    assert main(["demo", *QUICK_DEMO, "--runs-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(" reused: ") == 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_the_client(tmp_path):
    from superalign.models.http import OpenAIClient
    from superalign.models.tiny import build_model
    from superalign.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["Q: 1+2\n1+2=3\nA: 3\n"] * 20, 300)
    build_model("tiny", tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "superalign.cli", "serve", str(tmp_path / "m"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = OpenAIClient(f"http://127.0.0.1:{port}/v1", timeout=30)
        deadline = time.time() + 120
        while True:
            try:
                client.models()
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"server did not start: {proc.stderr.read()}") from None
                time.sleep(0.5)
        (out,) = client.complete(["Q: 1+2\n"], max_tokens=5, temperature=0, logprobs=1)
        assert len(out.tokens) == len(out.token_logprobs) == 5
        assert all(lp <= 0 for lp in out.token_logprobs)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_internal_errors_keep_their_traceback(monkeypatch):
    import superalign.stages

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(superalign.stages, "execute", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # not turned into an exit code
        main(["pretrain", "steps=1"])


def test_user_errors_print_one_line_even_for_multi_line_messages(monkeypatch, capsys):
    import superalign.preflight
    from superalign.config import ConfigError

    def fail(*args, **kwargs):
        raise ConfigError("first line\n  second line")

    monkeypatch.setattr(superalign.preflight, "check_stage", fail)
    assert main(["pretrain", "--check"]) == 2
    assert capsys.readouterr().err == "superalign pretrain: error: first line second line\n"

"""Everything a stage needs is checked before its run folder exists (superalign/preflight.py):
each bad input is one ``error:`` line, exit 2, no traceback and no run folder."""

import json

import pytest

from superalign.cli import main
from superalign.config import ConfigError, load_config
from superalign.models.load import ModelLoadError, check_spec
from superalign.models.pretrain import PretrainConfig
from superalign.preflight import check_stage
from superalign.stages import STAGES, execute
from superalign.stress.organisms import OrganismConfig


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub here: a hub id not in the local cache is a user error, found without a network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def user_error(capsys, argv, runs, message):
    """Run the CLI; assert one ``superalign <cmd>: error:`` line holding ``message``, exit 2, and
    no run folder left behind."""
    assert main([*argv, "--runs-dir", str(runs)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"superalign {argv[0]}: error: "), lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "task=arithmetc"], "unknown task 'arithmetc'"),
        (["pretrain", "task=arithmetc"], "Did you mean 'arithmetic'?"),
        (["pretrain", "task=bigbench:nonexistent"], "unknown BIG-bench task 'nonexistent'"),
        (["pretrain", "task_options.bogus=1"], "unknown config key 'task_options.bogus'"),
        (["pretrain", "task=facts", "task_options.n_entities=abc"], "must be an integer"),
        (["pretrain", "task=facts:qq"], "facts has sub-tasks"),
        (["sft", "model=/no/such/model"], "model: no such file or folder: '/no/such/model'"),
        (["sft", "model=./missing-run"], "no such file or folder"),
        (["sft", "model=smollm2-135m-instuct"], "Did you mean 'smollm2-135m-instruct'?"),
        (["sft", "model=someorg/somemodel"], "HF_HUB_OFFLINE is set"),
        (["sft", "model=smollm2-135m-instruct", "difficulties=[9]"], "no difficulty level 9"),
        (["pretrain", "eval_difficulties=[1,6]"], "eval_difficulties: arithmetic has no"),
        (["pretrain", "task=facts", "eval_difficulties=[4]"], "facts has no difficulty level 4"),
        (["critic", "model=smollm2-135m-instruct", "difficulties=[0]"], "no difficulty level 0"),
        (["organism", "model=smollm2-135m-instruct", "implant_steps=0"], "implant_steps must be"),
        (["organism", "model=smollm2-135m-instruct", "difficulty=8"], "no difficulty level 8"),
        (["rl", "model=smollm2-135m-instruct", "reference=../gone"], "reference: no such file"),
        (["rl", "model=smollm2-135m-instruct", "warmup_steps=-1"], "warmup_steps must be"),
        (["sft", "model=smollm2-135m-instruct", "difficulties=[1,2"], "must be a list"),
        (["rl", "model=smollm2-135m-instruct", "overseer=oracle"], "overseer 'oracle' is neither"),
        (["rl", "model=smollm2-135m-instruct", "overseer_options.bogus=1"], "'bogus' is not an"),
        (["reward_model", "model=smollm2-135m-instruct", "preferences=/no/prefs"], "no such"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_folder(tmp_path, capsys, argv, message):
    user_error(capsys, argv, tmp_path / "runs", message)


def test_hub_id_message_names_the_fix(tmp_path, capsys):
    user_error(capsys, ["sft", "model=someorg/somemodel"], tmp_path / "runs", "hf download")


def test_good_specs_pass_and_check_stops_before_running(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["sft", "model=smollm2-135m-instruct", "--check", "--runs-dir", str(runs)]) == 0
    assert "nothing run" in capsys.readouterr().out
    assert main(["pretrain", "task=bigbench:strategyqa", "eval_difficulties=[1]", "--check"]) == 0
    assert main(["pretrain", "task=bigbench:strategyqa", "--check"]) == 2  # levels 2, 3: none
    assert "bigbench has no difficulty level 2, 3; its levels are 1" in capsys.readouterr().err
    assert not runs.exists()


def test_execute_checks_before_the_run_folder_exists(tmp_path):
    cfg = load_config(PretrainConfig, None, ["eval_difficulties=[9]"])
    with pytest.raises(ConfigError, match="no difficulty level 9"):
        execute("pretrain", cfg, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_implant_steps_zero_fails_in_the_config_and_is_fine_without_an_implant():
    with pytest.raises(ConfigError, match="implant_steps must be at least 1 for kind=backdoor"):
        OrganismConfig(model="m", implant_steps=0)
    with pytest.raises(ConfigError, match="kind=sycophant"):
        OrganismConfig(kind="sycophant", model="m", implant_steps=0)
    OrganismConfig(kind="reward_hacker", model="m", implant_steps=0)  # no implanting fine-tune


def test_check_spec_resolves_like_load_model(tmp_path):
    assert check_spec("smollm2-135m-instruct") == "preset"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert check_spec(tmp_path / "m") == "folder"
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    assert check_spec(tmp_path / "w.gguf") == "gguf"
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        check_spec(tmp_path / "w.bin")
    with pytest.raises(ModelLoadError, match="holds no model"):
        check_spec(tmp_path)
    run = tmp_path / "sft-1a2b"
    (run / "model").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="has no summary.json: its stage has not finished"):
        check_spec(run)
    (run / "summary.json").write_text(json.dumps({}))
    (run / "model" / "config.json").write_text("{}")
    assert check_spec(run) == "run"
    with pytest.raises(ModelLoadError, match="no file, folder, preset or hub id"):
        check_spec("not a hub id!")


def test_hub_id_is_accepted_when_the_hub_may_serve_it(monkeypatch):
    import superalign.models.load as load

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(load, "_hub_reachable", lambda: True)
    assert check_spec("someorg/somemodel") == "hub"
    with pytest.raises(ModelLoadError, match="unknown preset"):  # a typo, even when online
        check_spec("gemma3-270")


def test_pending_pipeline_placeholders_are_not_checked_as_paths():
    cfg = load_config(STAGES["sft"].load()[0], None, ["model=runs/${policy}"])
    with pytest.raises(ConfigError, match="model:"):
        check_stage("sft", cfg)
    check_stage("sft", cfg, pending=["runs/${policy}"])


def test_urls_and_nested_inputs():
    judge_cls, _ = STAGES["judge_eval"].load()
    check_stage("judge_eval", load_config(judge_cls, None, ["model=http://127.0.0.1:8000/v1"]))
    oversight_cls, _ = STAGES["oversight"].load()
    policies = "policies=[smollm2-135m-instruct, /gone/policy]"
    cfg = load_config(oversight_cls, None, [policies, "overseers=[{spec: gold}]"])
    with pytest.raises(ConfigError, match="policies.1: no such file or folder"):
        check_stage("oversight", cfg)


def test_every_stage_with_its_defaults_passes_or_fails_as_a_user_error():
    for name, stage in STAGES.items():
        cfg_cls, _ = stage.load()
        try:
            cfg = cfg_cls()
        except ConfigError:  # a required field (a model) has no default
            continue
        check_stage(name, cfg)

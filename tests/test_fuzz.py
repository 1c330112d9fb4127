"""Fuzz the config path of every stage and of pipelines with a seeded generator: random values,
wrong types and broken YAML. Each outcome must be success (the config checks out) or one
``superalign <cmd>: error:`` line with exit 2; any other exception is a bug. Nothing trains: the
CLI runs with ``--check`` and ``execute`` is replaced by a function that fails the test."""

import random

import pytest
import yaml

import superalign.stages
from superalign.cli import main
from superalign.config import valid_keys
from superalign.stages import STAGES

SEED = 17
DRAWS_PER_STAGE = 25
"""Random override sets per stage (about 0.5 s for all stages together)."""

VALUES = [
    "0", "-1", "1", "3", "2.5", "1e400", "nan", "-inf", "true", "none", "null", "",
    "abc", "arithmetc", "facts", "bigbench:nonexistent", "bigbench:strategyqa",
    "smollm2-135m-instuct", "smollm2-135m-instruct", "someorg/somemodel", "/no/such/model",
    "./missing", "~/nothing/here.gguf", "http://127.0.0.1:9/v1", "${step}",
    "[1, 2", "[9]", "[]", "[1, 2, 3]", "[a, b]", "{a: 1}", "{a: [", "{bogus: 1}", "[{spec: gold}]",
    "'", '"', ": :", "- x", "\t", "é", "1,2", "[[1]]", "{}",
]  # fmt: skip
"""Values drawn for a key: numbers at the edges, wrong types, broken YAML, bad task and model
specs, a pipeline reference outside a pipeline."""


def draw_overrides(rng: random.Random, keys: list[str]) -> list[str]:
    """One to four ``key=value`` overrides; sometimes an unknown key or a key with no ``=``."""
    out = []
    for _ in range(rng.randint(1, 4)):
        key = rng.choice(keys + ["task_options.bogus", "task_options.n_entities", "nokey"])
        out.append(f"{key}={rng.choice(VALUES)}" if rng.random() > 0.03 else key)
    return out


def broken_yaml(rng: random.Random, data: dict) -> str:
    """A YAML dump of ``data`` with one cut, insertion or deletion."""
    text = yaml.safe_dump(data, default_flow_style=rng.random() < 0.5)
    i = rng.randrange(len(text) + 1)
    op = rng.choice(["cut", "insert", "delete"])
    if op == "cut":
        return text[:i]
    if op == "insert":
        return (
            text[:i]
            + rng.choice(["{", "[", ":", "'", "\t", "- ", "&a", "*b", "!!int x"])
            + text[i:]
        )
    return text[:i] + text[i + 3 :]


@pytest.fixture(autouse=True)
def never_run(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub probes: an uncached hub id is an error

    def refuse(*args, **kwargs):
        raise AssertionError("the fuzz test must not run a stage")

    monkeypatch.setattr(superalign.stages, "execute", refuse)
    monkeypatch.setattr(superalign.stages, "run_stage", refuse)


def assert_outcome(capsys, argv: list[str]) -> int:
    """Run the CLI; assert exit 0, or exit 2 with exactly one ``error:`` line."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors exit 2 too
        code = e.code
    captured = capsys.readouterr()
    assert code in (0, 2), (argv, code, captured.err)
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 or lines[0].startswith("usage:"), (argv, captured.err)
        assert "error: " in lines[-1] and "Traceback" not in captured.err, (argv, captured.err)
    return code


@pytest.mark.parametrize("name", sorted(STAGES))
def test_random_overrides_are_accepted_or_one_line_user_errors(name, capsys, tmp_path):
    rng = random.Random(f"{SEED}:{name}")
    keys = valid_keys(STAGES[name].load()[0])
    codes = [
        assert_outcome(
            capsys, [name, *draw_overrides(rng, keys), "--check", "--runs-dir", str(tmp_path)]
        )
        for _ in range(DRAWS_PER_STAGE)
    ]
    assert 2 in codes  # the generator does reach errors
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", sorted(STAGES))
def test_broken_config_files_are_one_line_user_errors(name, capsys, tmp_path):
    rng = random.Random(f"{SEED}:yaml:{name}")
    keys = [k for k in valid_keys(STAGES[name].load()[0]) if "." not in k]
    path = tmp_path / "config.yaml"
    for _ in range(DRAWS_PER_STAGE):
        data = {rng.choice(keys): yaml.safe_load(rng.choice(["1", "[1]", "x", "{a: 1}"]))}
        path.write_text(broken_yaml(rng, data))
        assert_outcome(capsys, [name, "--config", str(path), "--check"])


def test_random_pipelines_are_accepted_or_one_line_user_errors(capsys, tmp_path):
    rng = random.Random(f"{SEED}:pipeline")
    path = tmp_path / "p.yaml"
    stages = sorted(STAGES)
    for _ in range(60):
        steps = []
        for i in range(rng.randint(0, 3)):
            name = rng.choice(stages + ["pretrian"])
            keys = valid_keys(STAGES[name].load()[0]) if name in STAGES else ["steps"]
            config = {rng.choice(keys): yaml.safe_load(rng.choice(["1", "[1]", "x", "{a: 1}"]))}
            if steps and rng.random() < 0.5:
                config["model"] = "${" + rng.choice([s["id"] for s in steps] + ["later"]) + "}"
            steps.append({"id": f"s{i}", "stage": name, "config": config})
        data = {"stages": steps}
        text = broken_yaml(rng, data) if rng.random() < 0.5 else yaml.safe_dump(data)
        path.write_text(text)
        assert_outcome(capsys, ["run", str(path), "--check"])

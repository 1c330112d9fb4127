from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from superalign.config import (
    ConfigError,
    describe,
    field_docs,
    from_dict,
    load_config,
    to_dict,
    valid_keys,
)


@dataclass
class Optim:
    lr: float = 1e-3
    """Learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas."""


@dataclass
class Cfg:
    name: str = "x"
    """A name."""
    size: Literal["tiny", "small"] = "tiny"
    """Model size."""
    steps: int = 10
    """Optimizer steps."""
    flag: bool = False
    """A switch."""
    levels: list[int] = field(default_factory=lambda: [1, 2])
    """Difficulty levels."""
    seed: int | None = None
    """Optional seed."""
    optim: Optim = field(default_factory=Optim)
    """Optimizer settings."""
    options: dict[str, Any] = field(default_factory=dict)
    """Free-form options."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, not {self.steps}")


def test_defaults_yaml_and_overrides_layer(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("steps: 5\noptim:\n  lr: 0.1\nlevels: [3]\n")
    cfg = load_config(
        Cfg, y, ["optim.lr=3e-4", "flag=true", "seed=7", "size=small", "levels=1,2,3"]
    )
    assert cfg.steps == 5  # from YAML
    assert cfg.optim.lr == pytest.approx(3e-4)  # CLI beats YAML
    assert cfg.flag is True and cfg.seed == 7 and cfg.size == "small"
    assert cfg.levels == [1, 2, 3]
    assert cfg.optim.betas == (0.9, 0.95)
    assert load_config(Cfg, None, ["seed=null"]).seed is None
    assert load_config(Cfg, None, ["optim.betas=[0.8, 0.9]"]).optim.betas == (0.8, 0.9)
    # untyped mapping values from the command line are read as YAML
    opts = load_config(
        Cfg, None, ["options.levels=[1, 2]", "options.n=40", "options.name=abc"]
    ).options
    assert opts == {"levels": [1, 2], "n": 40, "name": "abc"}


def test_unknown_key_names_it_and_the_closest_valid_key():
    with pytest.raises(ConfigError, match="unknown config key 'stesp'.*Did you mean 'steps'"):
        load_config(Cfg, None, ["stesp=3"])
    with pytest.raises(ConfigError, match="'optim.lrr'.*Did you mean 'optim.lr'"):
        load_config(Cfg, None, ["optim.lrr=3"])
    with pytest.raises(ConfigError, match="unknown config key 'zzzzzz'.*Valid keys"):
        from_dict(Cfg, {"zzzzzz": 1})


@pytest.mark.parametrize(
    "override, message",
    [
        ("size=smal", "size must be one of 'tiny', 'small'.*Did you mean 'small'"),
        ("steps=abc", "steps must be an integer"),
        ("steps=1.5", "steps must be an integer"),
        ("flag=maybe", "flag must be true or false"),
        ("optim.lr=fast", "optim.lr must be a number"),
        ("steps=0", "steps must be at least 1"),
        ("novalue", "must look like key=value"),
    ],
)
def test_bad_values_fail_with_a_sentence(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Cfg, None, [override])


def test_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    y = tmp_path / "list.yaml"
    y.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Cfg, y)


def test_round_trip_and_docs():
    cfg = load_config(Cfg, None, ["optim.lr=0.5"])
    d = to_dict(cfg)
    assert d["optim"] == {"lr": 0.5, "betas": [0.9, 0.95]}
    assert from_dict(Cfg, d) == cfg
    assert "optim.lr" in valid_keys(Cfg)
    assert field_docs(Cfg)["steps"] == "Optimizer steps."
    text = describe(Cfg)
    assert "size ('tiny' | 'small', default 'tiny')" in text and "Learning rate." in text


def test_untyped_values_that_are_not_yaml_stay_strings():
    @dataclass
    class C:
        options: dict[str, Any] = field(default_factory=dict)
        """Free-form options."""

    cfg = load_config(C, None, ["options.op=>=", "options.n=3"])
    assert cfg.options == {"op": ">=", "n": 3}


def test_check_at_least_names_the_first_field_below_the_minimum():
    from superalign.config import check_at_least

    @dataclass
    class C:
        a: int = 1
        b: int = -1

    check_at_least(C(), 0, "a")
    with pytest.raises(ConfigError, match="b must be at least 0, not -1"):
        check_at_least(C(), 0, "a", "b")


def test_invalid_yaml_is_one_line_with_file_and_line(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("steps: 1\nsize: [tiny\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML: ") as info:
        load_config(Cfg, y)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not a text"):
        (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
        load_config(Cfg, tmp_path / "bin.yaml")


def test_malformed_list_and_mapping_overrides_are_config_errors():
    with pytest.raises(ConfigError, match=r"levels must be a list, not .\[1, 2."):
        load_config(Cfg, None, ["levels=[1, 2"])
    with pytest.raises(ConfigError, match="override key 'a..b' has an empty part"):
        load_config(Cfg, None, ["a..b=1"])


def test_set_threads_bounds_torch_and_every_blas_pool(monkeypatch):
    """A stage's ``threads`` bounds numpy's, scipy's and scikit-learn's pools too (loaded now,
    and through the environment those loaded later): unbounded, they spin on every core."""
    import os

    import sklearn.linear_model  # noqa: F401  (loads its OpenMP runtime)
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from superalign.config import BLAS_THREAD_VARIABLES, set_threads

    for name in BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    with threadpool_limits(None):  # restores the pools afterwards
        try:
            assert set_threads(1) == 1
            assert torch.get_num_threads() == 1
            assert [p["num_threads"] for p in threadpool_info()] == [1] * len(threadpool_info())
            assert all(os.environ[name] == "1" for name in BLAS_THREAD_VARIABLES)
        finally:
            torch.set_num_threads(before)

"""The typed config: every group option composes into real dataclasses; rules reject bad values."""

from __future__ import annotations

import dataclasses

import pytest

from lab.config import (
    ConfigError,
    DataConfig,
    HoldoutSplit,
    KFoldSplit,
    LogRegConfig,
    RandomForestConfig,
    SvmConfig,
    TrackingConfig,
    TrainConfig,
    validate,
)
from tests.conftest import MakeConfig, compose_raw

OPTIONS: dict[str, dict[str, type]] = {
    "data": {"iris": DataConfig, "wine": DataConfig, "breast_cancer": DataConfig, "digits": DataConfig},
    "model": {"logreg": LogRegConfig, "random_forest": RandomForestConfig, "svm": SvmConfig},
    "split": {"holdout": HoldoutSplit, "kfold": KFoldSplit},
    "tracking": {"mlflow": TrackingConfig, "none": TrackingConfig},
}


def test_defaults_match_the_documented_interface(make_config: MakeConfig) -> None:
    cfg = make_config()
    assert isinstance(cfg, TrainConfig)
    assert cfg.seed == 42
    assert cfg.data == DataConfig("iris")
    assert cfg.model == LogRegConfig(C=1.0, max_iter=200, solver="lbfgs")
    assert cfg.split == HoldoutSplit(test_size=0.2)
    assert cfg.tracking.enabled
    assert cfg.tracking.uri is None
    assert cfg.tracking.log_model


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in OPTIONS.items() for o in opts])
def test_every_group_option_is_a_typed_dataclass(make_config: MakeConfig, group: str, option: str) -> None:
    cfg = make_config(f"{group}={option}")
    assert type(getattr(cfg, group)) is OPTIONS[group][option]
    if group == "data":
        assert cfg.data.name == option


def test_overrides_are_typed_and_converted(make_config: MakeConfig) -> None:
    cfg = make_config("model=random_forest", "model.n_estimators=7", "model.max_depth=3", "seed=5")
    assert cfg.model == RandomForestConfig(n_estimators=7, max_depth=3)
    assert cfg.seed == 5


def test_plus_typo_on_typed_node_is_rejected_not_dropped(make_config: MakeConfig) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("+model.Cc=1")
    assert info.value.key == "model.Cc"
    assert "allowed: C, max_iter, name, solver" in info.value.allowed


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.C=0", "model.C"),
        ("model.C=-1", "model.C"),
        ("model.max_iter=0", "model.max_iter"),
        ("split.test_size=0", "split.test_size"),
        ("split.test_size=1.0", "split.test_size"),
        ("seed=-1", "seed"),
        ("model.solver=adam", "model.solver"),
    ],
)
def test_out_of_range_values_name_the_key(make_config: MakeConfig, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(override)
    assert info.value.key == key


def test_yaml_files_are_checked_against_their_schema() -> None:
    # Every YAML option extends its dataclass, so the composed node carries the schema type.
    for group, options in OPTIONS.items():
        for option, schema in options.items():
            cfg = compose_raw(f"{group}={option}")
            from omegaconf import OmegaConf

            assert OmegaConf.get_type(cfg[group]) is schema, (group, option)


def test_validate_walks_nested_dataclasses() -> None:
    cfg = TrainConfig(
        seed=1, data=DataConfig("iris"), model=SvmConfig(C=-2), split=HoldoutSplit(), tracking=TrackingConfig()
    )
    with pytest.raises(ConfigError, match=r"model.C=-2 .*>= 1e-300"):
        validate(cfg)
    validate(dataclasses.replace(cfg, model=SvmConfig()))  # the same config, valid: no error


def test_the_experiment_name_limit_is_mlflows() -> None:
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    from lab.validation import MAX_EXPERIMENT_NAME

    assert MAX_EXPERIMENT_NAME == MAX_EXPERIMENT_NAME_LENGTH

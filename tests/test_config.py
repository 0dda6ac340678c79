import dataclasses
import json

import pytest

from mmrad.config.schema import ConfigError, ExperimentConfig, MMRadConfig, TrainConfig, load_config
from mmrad.config.yamlio import apply_overrides, from_dict, parse_override
from tests.conftest import CONFIGS

TINY = CONFIGS / "tiny.yaml"


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_tiny_config_loads_with_types():
    cfg = load_config(TINY)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.vision.model_cfg["vision_cfg"]["patch_size"] == 8
    assert cfg.model.fusion.num_layers == 1
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.preprocess.image_size == 32


def test_model_config_round_trips_through_json():
    cfg = load_config(TINY).model
    again = MMRadConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_unknown_key_is_named(tmp_path):
    text = TINY.read_text().replace("  num_heads: 2", "  num_heads: 2\n    num_hedas: 3")
    with pytest.raises(ConfigError, match=r"model\.fusion\.num_hedas"):
        load_config(write(tmp_path, text))


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match="trian"):
        load_config(write(tmp_path, TINY.read_text() + "trian:\n  lr: 1.0\n"))


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.max_steps='many'", "train.max_steps"),
        ("train.lr=[1, 2]", "train.lr"),
        ("model.fusion.num_layers=1.5", "model.fusion.num_layers"),
        ("lora.enabled=3", "lora.enabled"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("model.labels.uncertainty=maybe", "uncertainty"),
    ],
)
def test_wrong_type_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TINY, [override])


def test_1e_minus_4_parses_as_float(tmp_path):
    # PyYAML reads 1e-4 (no dot) as the string "1e-4"
    text = TINY.read_text().replace("lr: 1.0e-3", "lr: 1e-4")
    cfg = load_config(write(tmp_path, text))
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(1e-4)
    cfg = load_config(TINY, ["train.lr=1e-4"])
    assert cfg.train.lr == pytest.approx(1e-4)


def test_overrides_apply_and_parse_values():
    cfg = load_config(TINY, ["train.lr=3.0e-4", "model.fusion.num_layers=2", "lora.enabled=True", "train.seed=7"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.fusion.num_layers == 2
    assert cfg.lora.enabled is True
    assert cfg.train.seed == 7
    assert parse_override("data.corpus=/some/dir") == (["data", "corpus"], "/some/dir")
    assert parse_override("lora.towers=['vision']") == (["lora", "towers"], ["vision"])


def test_override_values_read_like_the_config_files():
    """``--set`` values are YAML, as in the files: true/false, 1.0e-4, [a, b], null (and Python's True, None)."""
    cfg = load_config(TINY, ["lora.enabled=true", "train.lr=1.0e-4", "lora.towers=[vision, text]",
                             "train.log_with=null", "data.augment=false", "train.tower_lr=2e-5"])  # fmt: skip
    assert cfg.lora.enabled is True and cfg.lora.towers == ["vision", "text"] and cfg.train.log_with is None
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.data.augment is False and cfg.train.tower_lr == 2e-5
    assert load_config(TINY, ["train.log_with=None"]).train.log_with is None
    assert parse_override("model.labels.descriptions.Effusion='fluid, pleural'")[1] == "fluid, pleural"
    with pytest.raises(ConfigError, match=r"lora.enabled: expected true/false, got 'maybe'"):
        load_config(TINY, ["lora.enabled=maybe"])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.lr"])


def test_values_are_checked():
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="attention_layers"):
        load_config(TINY, ["model.fusion.attention_layers=3"])
    with pytest.raises(ConfigError, match="model.loss.grounding must be >= 0"):
        load_config(TINY, ["model.loss.grounding=-1"])


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError, match="model"):
        load_config(write(tmp_path, "train:\n  lr: 1.0e-3\n"))


def test_nested_dicts_become_dataclasses_when_built_directly():
    cfg = MMRadConfig(vision={"model_name": "ViT-B-16"}, text={"name_or_path": "bert-base-uncased"})
    assert cfg.vision.model_name == "ViT-B-16"
    assert cfg.text.pooler == "cls"
    with pytest.raises(ConfigError, match="vision.model_nmae"):
        from_dict(MMRadConfig, {"vision": {"model_nmae": "x"}, "text": {"name_or_path": "y"}})


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed"))

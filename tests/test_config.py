"""Tests for tunesmith.config: YAML round trip and one-sentence errors."""

import pytest

from tunesmith.config import RunConfig, apply_overrides, load_config, parse_config, save_config
from tunesmith.errors import ConfigError
from tunesmith.train.common import peft_config


def test_yaml_round_trip(tmp_path):
    config = RunConfig.model_validate(
        {
            "model": {"name": "some/model"},
            "data": {"train": "train.jsonl", "columns": {"text": "query", "label": "intent"}, "validation_split": 0.2},
            "method": {"adapter": "lora", "lora_r": 4, "target_modules": ["q_proj", "v_proj"]},
            "train": {"learning_rate": 3e-4, "max_steps": 7, "batch_size": "auto"},
            "reasons": {"train.batch_size": "because"},
        }
    )
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert load_config(path) == config


def test_default_config_round_trips(tmp_path):
    save_config(RunConfig(), tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == RunConfig()


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rat"):
        load_config(path)


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="bogus"):
        parse_config({"bogus": {}})


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"train": {"batch_size": "big"}}, "train.batch_size"),
        ({"train": {"max_steps": "x"}}, "train.max_steps"),
        ({"method": {"adapter": "lorax"}}, "method.adapter"),
        ({"data": {"validation_split": [1]}}, "data.validation_split"),
    ],
)
def test_bad_value_type_names_field(raw, field):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="c.yaml")
    message = str(info.value)
    assert message.startswith(f"c.yaml: {field}: ")
    # pydantic's union-member tags (".int", ".literal['auto']") are not field names
    assert ".int" not in message and "literal[" not in message


def test_auto_field_error_says_auto_is_allowed():
    with pytest.raises(ConfigError, match='"auto"'):
        parse_config({"train": {"batch_size": "big"}})


def test_invalid_yaml_mentions_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: x\ntrain:\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_unresolved_lists_auto_fields():
    config = RunConfig()
    assert set(config.unresolved()) == {
        "data.validation_split",
        "data.test_split",
        "train.learning_rate",
        "train.epochs",
        "train.batch_size",
        "train.gradient_accumulation",
        "train.max_length",
        "train.pack_length",
        "train.eval_steps",
        "train.best_metric",
        "train.logging_steps",
        "train.fused_kernels",
    }
    config.train.learning_rate = 1e-4
    assert "train.learning_rate" not in config.unresolved()


def test_qlora_is_lora_on_a_4bit_base():
    method = parse_config({"method": {"adapter": "qlora"}}).method
    assert (method.adapter, method.quantize) == ("lora", "4bit")
    method = parse_config({"method": {"adapter": "qlora", "quantize": "8bit"}}).method
    assert (method.adapter, method.quantize) == ("lora", "8bit")


@pytest.mark.parametrize(
    "method, message",
    [
        ({"stages": []}, "at least one stage"),
        ({"stages": ["sft", "pretrain"]}, "pretrain must be the first stage"),
        ({"stages": ["sft", "sft"]}, "once"),
        ({"stages": ["sft", "classify"]}, "sft or classify"),
        ({"stages": ["finetune"]}, "method.stages"),
        ({"adapter": "full", "quantize": "4bit"}, "cannot be fully fine-tuned"),
        ({"adapter": "lora", "freeze_layers": 2}, "freeze_layers applies to adapter full"),
    ],
)
def test_bad_method_combinations_are_one_sentence(method, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config({"method": method}, source="c.yaml")
    assert "Value error" not in str(info.value) and "\n" not in str(info.value)


def test_configs_written_before_stages_still_load():
    method = parse_config({"method": {"method": "full", "lora_r": 8}}).method
    assert (method.adapter, method.stages) == ("full", ["sft"])


def test_overrides_are_dotted_validated_and_their_source_recorded():
    config = apply_overrides(RunConfig(), {"train.epochs": 2, "method.lora_r": 64, "data.train": None}, source="options")
    assert config.train.epochs == 2 and config.method.lora_r == 64 and config.data.train is None
    assert config.sources == {"train.epochs": "options", "method.lora_r": "options"}
    with pytest.raises(ConfigError, match="options: train.epochs: .*greater than 0"):
        apply_overrides(RunConfig(), {"train.epochs": -1}, source="options")
    with pytest.raises(ConfigError, match="hyperparameter 'n_epochs'"):
        apply_overrides(RunConfig(), {"train.epochs": -1}, source="job", names={"train.epochs": "hyperparameter 'n_epochs'"})
    with pytest.raises(ConfigError, match="options: train.nonsense is not a config field"):
        apply_overrides(RunConfig(), {"train.nonsense": 1}, source="options")


@pytest.mark.parametrize("source", ["options", "job", "trial 3", "auto"])
def test_lora_alpha_follows_the_rank_for_every_caller_unless_set(source):
    """The bug of issue 21: the 2 x rank rule lived in the CLI and HPO only, so an API job with
    rank 64 trained with alpha 32. It is now the config's, and reaches the peft config."""
    config = apply_overrides(RunConfig(), {"method.lora_r": 64, "method.target_modules": ["q_proj"]}, source=source)
    assert config.method.alpha == 128
    assert peft_config(config.method, model=None, task_type="CAUSAL_LM").lora_alpha == 128
    fixed = apply_overrides(config, {"method.lora_alpha": 16}, source=source)
    assert fixed.method.alpha == 16
    assert load_config_text("method: {lora_r: 8}").method.alpha == 16  # a YAML file without alpha
    assert load_config_text("method: {lora_r: 8, lora_alpha: 32}").method.alpha == 32


def load_config_text(text: str) -> RunConfig:
    import yaml

    return parse_config(yaml.safe_load(text))

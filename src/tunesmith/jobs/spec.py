"""From an OpenAI fine-tuning job request to a tunesmith run config.

OpenAI's `method` is `{"type": "supervised" | "dpo", "<type>": {"hyperparameters": {...}}}`
with `n_epochs`, `batch_size`, `learning_rate_multiplier` (and `beta` for DPO), each a value
or "auto". tunesmith extends it: `type` may be any tunesmith stage (`classify`, `pretrain`,
`orpo`, `kto`, `simpo`, `reward`, `grpo`, `rloo`, ...), and `hyperparameters` may set any
`train` or `method` field of the run config (`adapter`, `lora_r`, `max_steps`, ...) and
`validation_split`, `test_split`, `system_prompt` or `force` of `data`.
"""

from __future__ import annotations

from typing import get_args

from pydantic import ValidationError

from tunesmith.config import STAGE_TASKS, MethodConfig, RunConfig, Stage, TrainConfig
from tunesmith.errors import ConfigError
from tunesmith.train.auto import default_learning_rate

OPENAI_TYPES = {"supervised": "sft", "dpo": "dpo"}
STAGE_NAMES = get_args(Stage)
RENAMED = {"n_epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "beta": ("method", "beta")}
DATA_KEYS = ("validation_split", "test_split", "system_prompt", "force")


def stage_of(method: dict) -> str:
    """The tunesmith stage a job's `method.type` names."""
    kind = method.get("type", "supervised")
    stage = OPENAI_TYPES.get(kind, kind)
    if stage not in STAGE_NAMES:
        raise ConfigError(
            f"method.type '{kind}' is not supported: use supervised, dpo or a tunesmith stage ({', '.join(STAGE_NAMES)})."
        )
    return stage


def hyperparameters_of(method: dict) -> dict:
    kind = method.get("type", "supervised")
    block = method.get(kind) or {}
    if not isinstance(block, dict) or not isinstance(block.get("hyperparameters", {}), dict):
        raise ConfigError(f"method.{kind}.hyperparameters must be an object of name: value.")
    return dict(block.get("hyperparameters") or {})


def build_config(
    source: str, method: dict, training_file: str, validation_file: str | None, seed: int
) -> RunConfig:
    """The run config for a job on base model `source` (a loadable name or folder) with its
    files at the given paths. Raises ConfigError naming the bad hyperparameter."""
    stage = stage_of(method)
    values = {"model": {"name": source}, "data": {"train": training_file, "validation": validation_file},
              "method": {"stages": [stage]}, "train": {"seed": seed}}
    multiplier = None
    for key, value in hyperparameters_of(method).items():
        if key == "learning_rate_multiplier":
            multiplier = value
        elif key in RENAMED:
            section, field = RENAMED[key]
            values[section][field] = value
        elif key in DATA_KEYS:
            values["data"][key] = value
        elif key in TrainConfig.model_fields:
            values["train"][key] = value
        elif key in MethodConfig.model_fields and key != "stages":
            values["method"][key] = value
        else:
            raise ConfigError(
                f"Unknown hyperparameter '{key}': use n_epochs, batch_size, learning_rate_multiplier, beta, or a "
                "tunesmith train/method setting such as learning_rate, max_steps, adapter or lora_r."
            )
    try:
        config = RunConfig.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"][1:2]) or str(error["loc"])
        raise ConfigError(f"hyperparameter '{where}': {error['msg']}.") from None
    if multiplier not in (None, "auto"):
        if not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool) or multiplier <= 0:
            raise ConfigError("hyperparameter 'learning_rate_multiplier' must be a positive number or 'auto'.")
        if config.train.learning_rate != "auto":
            raise ConfigError("Give learning_rate or learning_rate_multiplier, not both.")
        config.train.learning_rate = default_learning_rate(config) * multiplier
        config.reasons["train.learning_rate"] = f"the automatic rate times learning_rate_multiplier {multiplier}"
    return config


# The job's own names for the resolver's keys (the rest keep their dotted config names).
JOB_NAMES = {"train.epochs": "n_epochs", "train.batch_size": "batch_size", "train.learning_rate": "learning_rate"}


def resolved_settings(config: RunConfig) -> dict:
    """A resolved config's values as a job shows them: OpenAI's three hyperparameters, then
    every other value the resolver chose, and under `reasons` why each was chosen."""
    t = config.train
    values: dict = {"n_epochs": t.epochs, "batch_size": t.batch_size, "learning_rate": t.learning_rate}
    reasons = {}
    for key, why in config.reasons.items():
        name = JOB_NAMES.get(key, key)
        section, _, field = key.partition(".")
        values.setdefault(name, getattr(getattr(config, section, None), field, None))
        reasons[name] = why
    return values | {"reasons": reasons}


def check_data_fits(stage: str, task: str, file_id: str) -> None:
    if task not in STAGE_TASKS[stage]:
        raise ConfigError(
            f"{file_id} holds {task} data, but a {stage} job needs {' or '.join(STAGE_TASKS[stage])} data; "
            "upload a matching file or choose another method.type."
        )

"""From an OpenAI fine-tuning job request to a tunesmith run config.

OpenAI's `method` is `{"type": "supervised" | "dpo", "<type>": {"hyperparameters": {...}}}`
with `n_epochs`, `batch_size`, `learning_rate_multiplier` (and `beta` for DPO), each a value
or "auto". tunesmith extends it: `type` may be any tunesmith stage (`classify`, `pretrain`,
`orpo`, `kto`, `simpo`, `reward`, `grpo`, `rloo`, ...), and `hyperparameters` may set the
settings in `HYPERPARAMETERS` that the method uses, each a bounded value of one JSON type.

A client never names a path or a URL on the server. Server-side resources (reward functions,
reward models, LLM judges) are referred to by the names the operator registered
(`tunesmith serve --reward-fn/--reward-model/--judge`, or its `--config` file), or a reward
model by the id of one of the project's own fine-tuned reward models. `server_overrides`
turns those names into the config values they stand for; the job stores them out of the
client's sight and the worker applies them with `build_config(..., overrides=...)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

from tunesmith.config import RL_STAGES, STAGE_TASKS, RunConfig, Stage, apply_overrides
from tunesmith.domains.apply import apply_pack
from tunesmith.domains.packs import DOMAINS
from tunesmith.errors import ConfigError
from tunesmith.train.auto import default_learning_rate

OPENAI_TYPES = {"supervised": "sft", "dpo": "dpo"}
STAGE_NAMES = get_args(Stage)
MAX_HYPERPARAMETERS = 64
MAX_RESOURCE_NAMES = 8  # reward functions one job may combine
BUILTIN_REWARD_FUNCTIONS = ("exact_match", "contains_answer", "length")  # train.rl.BUILTIN_REWARDS


@dataclass(frozen=True)
class Setting:
    """One hyperparameter a job may set: the config field it fills and the JSON type it takes
    (bounds are the config field's own)."""

    path: str  # dotted config field, e.g. "train.epochs"
    kind: str  # "number", "integer", "boolean", "string", "names" (a list of identifiers)
    auto: bool = False  # "auto" is allowed
    choices: tuple[str, ...] = ()  # for strings from a fixed set


_ADAPTERS = ("lora", "qlora", "rslora", "dora", "pissa", "olora", "loha", "lokr", "ia3", "prompt", "prefix", "full")
# Every stage takes these: OpenAI's three, then tunesmith's training, adapter and data settings.
COMMON: dict[str, Setting] = {
    "n_epochs": Setting("train.epochs", "number", auto=True),
    "batch_size": Setting("train.batch_size", "integer", auto=True),
    "learning_rate": Setting("train.learning_rate", "number", auto=True),
    "max_steps": Setting("train.max_steps", "integer"),
    "gradient_accumulation": Setting("train.gradient_accumulation", "integer", auto=True),
    "max_length": Setting("train.max_length", "integer", auto=True),
    "pack_length": Setting("train.pack_length", "integer", auto=True),
    "weight_decay": Setting("train.weight_decay", "number"),
    "warmup_ratio": Setting("train.warmup_ratio", "number"),
    "eval_steps": Setting("train.eval_steps", "integer", auto=True),
    "early_stopping_patience": Setting("train.early_stopping_patience", "integer"),
    "save_total_limit": Setting("train.save_total_limit", "integer"),
    "logging_steps": Setting("train.logging_steps", "integer"),
    "best_metric": Setting("train.best_metric", "string", auto=True, choices=("loss", "accuracy", "macro_f1", "reward")),
    "adapter": Setting("method.adapter", "string", choices=_ADAPTERS),
    "quantize": Setting("method.quantize", "string", choices=("none", "4bit", "8bit")),
    "lora_r": Setting("method.lora_r", "integer"),
    "lora_alpha": Setting("method.lora_alpha", "integer"),
    "lora_dropout": Setting("method.lora_dropout", "number"),
    "target_modules": Setting("method.target_modules", "names"),
    "num_virtual_tokens": Setting("method.num_virtual_tokens", "integer"),
    "freeze_layers": Setting("method.freeze_layers", "integer"),
    "gradient_checkpointing": Setting("method.gradient_checkpointing", "boolean"),
    "neftune_alpha": Setting("method.neftune_alpha", "number"),
    "label_smoothing": Setting("method.label_smoothing", "number"),
    "validation_split": Setting("data.validation_split", "number", auto=True),
    "test_split": Setting("data.test_split", "number", auto=True),
    "system_prompt": Setting("data.system_prompt", "string"),
    "force": Setting("data.force", "boolean"),
    # A domain pack and its task template (`GET /v1/tunesmith/domains`): the pack's compliance
    # profile gates the data, its probes join the evaluation, and the job goes to the audit trail.
    "domain": Setting("domain", "string", choices=tuple(DOMAINS)),
    "template": Setting("template", "string"),
}
_BETA = {"beta": Setting("method.beta", "number")}
_RL = _BETA | {
    "num_generations": Setting("method.num_generations", "integer"),
    "max_completion_length": Setting("method.max_completion_length", "integer"),
    "temperature": Setting("method.temperature", "number"),
    "judge_rubric": Setting("method.judge_rubric", "string"),
}
# What each stage takes beyond COMMON.
BY_STAGE: dict[str, dict[str, Setting]] = {
    "dpo": _BETA | {"dpo_loss": Setting("method.dpo_loss", "string", choices=("sigmoid", "ipo", "robust")),
                    "label_noise": Setting("method.label_noise", "number")},
    "orpo": _BETA,
    "simpo": _BETA | {"simpo_gamma": Setting("method.simpo_gamma", "number")},
    "kto": _BETA,
    "grpo": _RL,
    "rloo": _RL,
}
# Named server-side resources (RL stages only): resolved by `server_overrides`, never a path.
RESOURCE_KEYS = ("reward_functions", "reward_model", "judge")
SPECIAL_KEYS = ("learning_rate_multiplier",)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")  # a module name, never a path or a regex


def allowed_hyperparameters(stage: str) -> list[str]:
    """The hyperparameter names a job of `stage` may set."""
    extra = list(BY_STAGE.get(stage, {}))
    resources = list(RESOURCE_KEYS) if stage in RL_STAGES else []
    return list(COMMON) + extra + resources + list(SPECIAL_KEYS)


def stage_of(method: dict) -> str:
    """The tunesmith stage a job's `method.type` names."""
    kind = method.get("type", "supervised")
    stage = OPENAI_TYPES.get(kind, kind) if isinstance(kind, str) else None
    if stage not in STAGE_NAMES:
        raise ConfigError(
            f"method.type '{kind}' is not supported: use supervised, dpo or a tunesmith stage ({', '.join(STAGE_NAMES)})."
        )
    return stage


def hyperparameters_of(method: dict) -> dict:
    kind = method.get("type", "supervised")
    block = method.get(kind) if isinstance(kind, str) else None
    block = block or {}
    if not isinstance(block, dict) or not isinstance(block.get("hyperparameters", {}), dict):
        raise ConfigError(f"method.{kind}.hyperparameters must be an object of name: value.")
    return dict(block.get("hyperparameters") or {})


def _checked_value(name: str, setting: Setting, value: Any) -> Any:
    """`value` if it has the setting's JSON type (a bool is not a number, "3" is not an
    integer); ConfigError naming the hyperparameter otherwise."""
    if setting.auto and value == "auto":
        return value
    auto = ' or "auto"' if setting.auto else ""
    ok = {
        "number": isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value),
        "integer": isinstance(value, int) and not isinstance(value, bool)
        or isinstance(value, float) and value.is_integer(),
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str) and (not setting.choices or value in setting.choices),
        "names": value == "all-linear" or isinstance(value, list) and 0 < len(value) <= 64
        and all(isinstance(v, str) and _NAME.fullmatch(v) for v in value),
    }[setting.kind]
    if ok:
        return int(value) if setting.kind == "integer" else value
    what = {
        "number": "a finite number", "integer": "a whole number", "boolean": "true or false",
        "string": f"one of {', '.join(setting.choices)}" if setting.choices else "a string",
        "names": '"all-linear" or a list of up to 64 module names such as ["q_proj", "v_proj"]',
    }[setting.kind]
    raise ConfigError(f"hyperparameter '{name}' must be {what}{auto}.")


def build_config(
    source: str, method: dict, training_file: str, validation_file: str | None, seed: int,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """The run config for a job on base model `source` (a loadable name or folder) with its
    files at the given paths: the allow-listed hyperparameters of its stage, then the
    server's `overrides` (dotted config fields from `server_overrides`). Raises ConfigError
    naming the bad hyperparameter."""
    stage = stage_of(method)
    job = {"model.name": source, "data.train": training_file, "data.validation": validation_file,
           "method.stages": [stage], "train.seed": seed}
    values: dict[str, Any] = {}
    settings = COMMON | BY_STAGE.get(stage, {})
    hyperparameters = hyperparameters_of(method)
    if len(hyperparameters) > MAX_HYPERPARAMETERS:
        raise ConfigError(f"A job takes at most {MAX_HYPERPARAMETERS} hyperparameters; send fewer.")
    multiplier = None
    names: dict[str, str] = {}  # config field -> the job's name for it, for error messages
    for key, value in hyperparameters.items():
        if key == "learning_rate_multiplier":
            multiplier = value
        elif key in settings:
            values[settings[key].path] = _checked_value(key, settings[key], value)
            names[settings[key].path] = f"hyperparameter '{key}'"
        elif key in RESOURCE_KEYS and stage in RL_STAGES:
            continue  # names of server resources: `server_overrides` resolved them
        else:
            raise ConfigError(
                f"Unknown hyperparameter '{key}' for method {stage}: use one of "
                f"{', '.join(allowed_hyperparameters(stage))}."
            )
    config = apply_overrides(RunConfig(), job, source="job")
    config = apply_overrides(config, values, source="hyperparameters", names=names)
    config = apply_overrides(config, overrides or {}, source="server")
    # A template without its domain, or of another pack, is one sentence; a template sets the
    # system prompt and its settings here, so the preview shows them.
    config, _ = apply_pack(config)
    if multiplier not in (None, "auto"):
        if not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool) or not 0 < multiplier <= 100:
            raise ConfigError("hyperparameter 'learning_rate_multiplier' must be a number above 0 and at most 100, or 'auto'.")
        if config.train.learning_rate != "auto":
            raise ConfigError("Give learning_rate or learning_rate_multiplier, not both.")
        rate = default_learning_rate(config) * multiplier
        if rate > 1.0:
            raise ConfigError(f"learning_rate_multiplier {multiplier} makes a learning rate of {rate:g}, above 1; use a smaller multiplier.")
        config.train.learning_rate = rate
        config.reasons["train.learning_rate"] = f"the automatic rate times learning_rate_multiplier {multiplier}"
    return config


# --------------------------------------------------------------------------- server resources


@dataclass(frozen=True)
class Judge:
    """An LLM judge the operator offers: its endpoint, the model it runs there, and the
    environment variable with its key (the key only ever goes to this URL)."""

    url: str
    model: str | None = None
    key_env: str | None = None


@dataclass(frozen=True)
class Resources:
    """What the operator registered, by name; clients see the names only."""

    reward_functions: dict[str, str] = field(default_factory=dict)  # name -> FILE.py or FILE.py:NAME
    reward_models: dict[str, str] = field(default_factory=dict)  # name -> reward-model run folder
    judges: dict[str, Judge] = field(default_factory=dict)

    def names(self) -> dict[str, list[str]]:
        return {"reward_functions": list(BUILTIN_REWARD_FUNCTIONS) + sorted(self.reward_functions),
                "reward_models": sorted(self.reward_models), "judges": sorted(self.judges)}


def server_overrides(method: dict, resources: Resources, own_reward_model: Callable[[str], str | None]) -> dict[str, Any]:
    """The config values (dotted fields) that the resource names in a job's hyperparameters
    stand for. `own_reward_model(id)` is the run folder of the project's own fine-tuned
    reward model with that id, or None. ConfigError names an unknown name and the choices."""
    stage = stage_of(method)
    hp = hyperparameters_of(method)
    if stage not in RL_STAGES or not any(k in hp for k in RESOURCE_KEYS):
        return {}
    out: dict[str, Any] = {}
    offered = resources.names()
    if "reward_functions" in hp:
        names = hp["reward_functions"]
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or len(names) > MAX_RESOURCE_NAMES or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"hyperparameter 'reward_functions' must be a list of 1 to {MAX_RESOURCE_NAMES} names.")
        specs = []
        for name in names:
            if name in BUILTIN_REWARD_FUNCTIONS:
                specs.append(name)
            elif name in resources.reward_functions:
                specs.append(resources.reward_functions[name])
            else:
                raise ConfigError(f"Unknown reward function '{name[:80]}': this server offers "
                                  f"{', '.join(offered['reward_functions'])}.")
        out["method.reward_functions"] = specs
    if "reward_model" in hp:
        name = hp["reward_model"]
        folder = None
        if isinstance(name, str):
            folder = resources.reward_models.get(name) or own_reward_model(name)
        if folder is None:
            have = ", ".join(offered["reward_models"]) or "none registered"
            raise ConfigError(f"Unknown reward model '{str(name)[:120]}': name one of this server's ({have}) or the id "
                              "of one of your fine-tuned reward models (method.type reward).")
        out["method.reward_model"] = folder
    if "judge" in hp:
        judge = resources.judges.get(hp["judge"]) if isinstance(hp["judge"], str) else None
        if judge is None:
            have = ", ".join(offered["judges"]) or "none registered"
            raise ConfigError(f"Unknown judge '{str(hp['judge'])[:80]}': this server offers {have}.")
        out |= {"method.judge_url": judge.url, "method.judge_model": judge.model, "method.judge_key_env": judge.key_env}
    return out


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
        section, _, field_ = key.partition(".")
        values.setdefault(name, getattr(getattr(config, section, None), field_, None))
        reasons[name] = why
    return values | {"reasons": reasons}


def check_data_fits(stage: str, task: str, file_id: str) -> None:
    if task not in STAGE_TASKS[stage]:
        raise ConfigError(
            f"{file_id} holds {task} data, but a {stage} job needs {' or '.join(STAGE_TASKS[stage])} data; "
            "upload a matching file or choose another method.type."
        )

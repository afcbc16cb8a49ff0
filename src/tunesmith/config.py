"""One typed config per run. Any field typed `... | Auto` may be "auto"; `train.auto` resolves
those from the data, the model and the hardware and records why next to each value. The
resolved config is saved as `config.yaml` in the run directory so a run can be repeated."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunesmith.errors import ConfigError

Auto = Literal["auto"]
# Bounds on every number a run takes (the CLI, YAML files and the API's job requests alike): a
# value outside them is a typo or an attack, never a run that could finish. NaN and infinity are refused.
Fraction = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
LearningRate = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Epochs = Annotated[float, Field(gt=0.0, le=1000.0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1, le=1_000_000)]
Tokens = Annotated[int, Field(ge=8, le=1_048_576)]
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit; transformers seeds numpy with it
Stage = Literal["pretrain", "sft", "classify", "reward", "dpo", "orpo", "simpo", "kto", "grpo", "rloo"]
PREFERENCE_STAGES = ("dpo", "orpo", "simpo", "kto")  # offline: learn from preference data
RL_STAGES = ("grpo", "rloo")  # online: sample answers and learn from their rewards
# Stages run in this order; a later stage starts from the weights of the earlier ones.
STAGE_ORDER = {"pretrain": 0, "sft": 1, "classify": 1, "reward": 2} | {s: 3 for s in PREFERENCE_STAGES + RL_STAGES}
# What each stage can train on: the task a data file's format says (data.formats.TASKS).
STAGE_TASKS = {
    "sft": ("chat", "classify"),  # text+label rows become chats
    "classify": ("classify",),
    "pretrain": ("pretrain", "classify"),  # the text of text+label rows
    "reward": ("preference",),
    **{s: ("preference",) for s in PREFERENCE_STAGES if s != "kto"},
    "kto": ("preference", "kto"),
    **{s: ("chat", "preference", "classify") for s in RL_STAGES},
}
Adapter = Literal["lora", "rslora", "dora", "pissa", "olora", "loha", "lokr", "ia3", "prompt", "prefix", "full"]


class _Section(BaseModel):
    # Unknown keys in a YAML file are a typo the user should hear about, not silently ignore.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelConfig(_Section):
    name: str = "smollm2-135m"
    """Base model: a built-in name (`tunesmith models`), a local Hugging Face model folder, or a hub id."""


class DataConfig(_Section):
    train: str | None = None
    """Training data file (JSONL, JSON, CSV, TSV, Parquet, TXT or a saved `datasets` folder)."""
    validation: str | None = None
    """Validation data file; when empty, a split of the training data is held out."""
    validation_split: Fraction | Auto = "auto"
    """Fraction of the training data held out for validation when no validation file is given."""
    test: str | None = None
    """Test file for the before/after evaluation (`tunesmith eval`); when empty, `test_split` of the training data."""
    test_split: Fraction | Auto = "auto"
    """Fraction of the training data held out, never trained on, as the test set when no test file is given
    (auto: 10%, at most 500 rows, when there are at least 200 rows; 0 = none)."""
    columns: dict[str, str] | None = None
    """Override format detection: canonical field -> column name, e.g. {text: query, label: intent}."""
    system_prompt: str | None = Field(None, max_length=32_000)
    """System message added to every conversation that has none (text+label data becomes chat)."""
    force: bool = False
    """Train even when the data gate finds errors (the data card records that you did)."""
    pretrain: str | None = None
    """Raw-text file for the `pretrain` stage when later stages train on `train` (e.g. stages pretrain,sft)."""
    replay_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of general data mixed into the training set so the model keeps its general skills: general
    text blocks in a `pretrain` stage, general chat rows (asked without the system prompt) in an `sft`
    stage; validation and test stay the task's own (0.1-0.3 is common; 0 = none; `classify` refuses it)."""
    replay_file: str | None = None
    """General data for the replay mix: raw text for `pretrain`, chat rows for `sft`; default: the samples
    shipped with tunesmith (160 general-text paragraphs, and the general chat set `general_chat.jsonl`)."""
    preference: str | None = None
    """Preference pairs for the reward / DPO-family stages of a multi-stage run; default: `train`."""
    prompts: str | None = None
    """Prompts for the grpo/rloo stage of a multi-stage run; default: the prompts of `preference`, else of `train`."""


class MethodConfig(_Section):
    stages: list[Stage] = Field(default_factory=lambda: ["sft"])
    """Training stages in order: `pretrain` (continued pretraining on raw text), `sft` (chat or
    instruction tuning), `classify` (a classification head), `reward` (a reward model from preference
    pairs), one of `dpo`, `orpo`, `simpo`, `kto` (offline preference optimisation) or `grpo`, `rloo`
    (reinforcement learning against rewards). Each stage starts from the previous one's weights."""
    adapter: Adapter = "lora"
    """What is trained: `lora` (default), `rslora`, `dora`, `pissa`/`olora` (LoRA with SVD/QR initialisation),
    `loha`, `lokr`, `ia3`, `prompt` or `prefix` tuning, or `full` (every weight). `qlora` = lora + quantize 4bit."""
    quantize: Literal["none", "4bit", "8bit", "auto"] = "none"
    """Load the frozen base model in 4 or 8 bits (QLoRA); needs a CUDA GPU and bitsandbytes. `auto`: 4-bit
    when the model in bfloat16 and one sequence's activations would not fit in the GPU's free memory."""
    lora_r: int = Field(16, ge=1, le=4096)
    """LoRA rank: 16 is enough for one task on a small model and keeps adapters a few MB."""
    lora_alpha: int | None = Field(None, ge=1, le=65_536)
    """LoRA scaling; empty: 2 x `lora_r` (the common default), read through `alpha`."""
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA input: light regularisation against overfitting small data sets."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get adapters; `all-linear` (every linear layer but the output head) matches QLoRA's finding."""
    num_virtual_tokens: int = Field(20, ge=1, le=4096)
    """Learned virtual tokens for `prompt` and `prefix` tuning."""
    freeze_layers: int = Field(0, ge=0, le=10_000)
    """With `full`: keep the embeddings and the bottom N layers frozen (less memory, less forgetting)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass: less memory, about 30% slower. Empty: on for a 4- or
    8-bit base (whose point is saving memory), off otherwise; read through `checkpointing`."""
    neftune_alpha: float = Field(0.0, ge=0.0, le=1000.0, allow_inf_nan=False)
    """NEFTune: uniform noise of this scale on input embeddings during training (5 is the paper's value; 0 = off)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Label smoothing of the training loss (0.1 is common; 0 = off)."""
    beta: float | None = Field(None, ge=0.0, le=1000.0, allow_inf_nan=False)
    """Preference/RL strength: DPO/KTO/IPO pull to the reference model, ORPO's odds-ratio weight, SimPO's
    reward scale, GRPO/RLOO's KL penalty. Empty: the method's published default, filled in when it trains."""
    dpo_loss: Literal["sigmoid", "ipo", "robust"] = "sigmoid"
    """DPO loss: `sigmoid` (the paper's), `ipo` (bounded; resists overfitting the pairs), `robust` (assumes
    a share `label_noise` of the pairs is labelled the wrong way round)."""
    label_noise: float = Field(0.1, ge=0.0, lt=0.5)
    """Robust DPO: the share of preference pairs assumed flipped (0.1 is the paper's suggestion)."""
    simpo_gamma: float = Field(0.5, ge=0.0, le=1000.0, allow_inf_nan=False)
    """SimPO target reward margin, as a share of beta (gamma/beta; 0.5 is the paper's)."""
    reward_model: str | None = None
    """grpo/rloo: a reward-model run (`tunesmith train --method reward`). In `--stages ...,reward,grpo`
    the run's own reward stage is used."""
    reward_functions: list[str] = Field(default_factory=list)
    """grpo/rloo: Python rewards: built-in `exact_match`, `contains_answer`, `length`, a file `rewards.py`
    (every function named `reward_*`) or `rewards.py:NAME`. Each gets prompts, completions and the row's `answer`."""
    judge_url: str | None = None
    """grpo/rloo: an LLM judge behind an OpenAI-compatible endpoint (e.g. http://localhost:8000/v1) scores
    each answer 1-10; its key comes from TUNESMITH_JUDGE_KEY or OPENAI_API_KEY."""
    judge_model: str | None = None
    """The model name the judge endpoint should run."""
    judge_key_env: str | None = None
    """Environment variable holding the judge endpoint's API key; empty: TUNESMITH_JUDGE_KEY, else OPENAI_API_KEY."""
    judge_rubric: str = Field("Is the answer helpful, correct and harmless for the user's request?", max_length=4000)
    """What the judge scores the answers on."""
    num_generations: int = Field(4, ge=2, le=256)
    """grpo/rloo: answers sampled per prompt; each is rewarded against the others of its group."""
    max_completion_length: int | None = Field(None, ge=1, le=1_048_576)
    """grpo/rloo: longest sampled answer in tokens. Empty: from the reference answers in the data, filled in
    when it trains."""
    temperature: float = Field(1.0, gt=0.0, le=100.0, allow_inf_nan=False)
    """grpo/rloo: sampling temperature of the answers (1.0 keeps the groups diverse)."""

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data):
        if not isinstance(data, dict):
            return data
        if data.get("method") in ("lora", "full") and "adapter" not in data:
            # Runs written before stages existed said `method: lora|full`; they still load.
            data = {k: v for k, v in data.items() if k != "method"} | {"adapter": data["method"]}
        if data.get("adapter") == "qlora":
            # "qlora" is what users call LoRA on a 4-bit base; store it as its two parts.
            quantize = data.get("quantize") if data.get("quantize") not in (None, "none", "auto") else "4bit"
            data = {**data, "adapter": "lora", "quantize": quantize}
        return data

    @property
    def checkpointing(self) -> bool:
        """Gradient checkpointing in effect: `gradient_checkpointing`, or on for a quantized base when it is
        not set (QLoRA saves memory; keeping every activation would spend it again)."""
        if self.gradient_checkpointing is not None:
            return self.gradient_checkpointing
        return self.quantize in ("4bit", "8bit")

    @property
    def alpha(self) -> int:
        """The LoRA scaling in effect: `lora_alpha`, or 2 x `lora_r` when it is not set. The rule
        lives here so every caller (CLI, YAML, API jobs, HPO trials, auto) gets it."""
        return self.lora_alpha or 2 * self.lora_r

    @field_validator("stages")
    @classmethod
    def _stage_order(cls, stages: list[str]) -> list[str]:
        if not stages:
            raise ValueError("give at least one stage")
        if len(set(stages)) != len(stages):
            raise ValueError("each stage may appear once")
        if "pretrain" in stages and stages[0] != "pretrain":
            raise ValueError("pretrain must be the first stage")
        if "sft" in stages and "classify" in stages:
            raise ValueError("choose sft or classify, not both")
        if "classify" in stages and len(stages) > 1 and stages[-1] != "classify":
            raise ValueError("a classifier is the last stage: reward and alignment stages train a generating model")
        ranks = [STAGE_ORDER[s] for s in stages]
        if ranks != sorted(ranks) or len(set(ranks)) != len(ranks):
            raise ValueError(
                "stages run in the order pretrain, sft (or classify), reward, then one of "
                + ", ".join(PREFERENCE_STAGES + RL_STAGES)
            )
        if "reward" in stages and stages[-1] in PREFERENCE_STAGES:
            raise ValueError(f"{stages[-1]} learns from the pairs directly; a reward stage is used by grpo or rloo only")
        return stages

    @model_validator(mode="after")
    def _compatible(self):
        if self.quantize in ("4bit", "8bit") and self.adapter == "full":
            raise ValueError("a quantized base model cannot be fully fine-tuned: use adapter lora (QLoRA)")
        if self.freeze_layers and self.adapter != "full":
            raise ValueError("freeze_layers applies to adapter full; adapters already keep the base frozen")
        return self


class TrainConfig(_Section):
    learning_rate: LearningRate | Auto = "auto"
    """Peak learning rate (cosine decay after a short warm-up)."""
    epochs: Epochs | Auto = "auto"
    """Passes over the training data (the early-stopping rule may end the run sooner)."""
    max_steps: Count | None = None
    """Stop after this many optimizer steps, overriding `epochs`."""
    batch_size: Annotated[int, Field(ge=1, le=65_536)] | Auto = "auto"
    """Packed sequences per device per step."""
    gradient_accumulation: Annotated[int, Field(ge=1, le=65_536)] | Auto = "auto"
    """Steps of gradients summed before each optimizer update."""
    max_length: Tokens | Auto = "auto"
    """Longest example in tokens; longer ones are cut (the data inspector says how many)."""
    pack_length: Tokens | Auto = "auto"
    """Length of one packed training sequence: several short examples share one row, no padding."""
    weight_decay: float = Field(0.01, ge=0.0, le=100.0, allow_inf_nan=False)
    """AdamW weight decay: mild regularisation, on by default."""
    warmup_ratio: Fraction = 0.05
    """Share of steps spent warming the learning rate up from zero."""
    eval_steps: Count | Auto = "auto"
    """Evaluate on the validation set every N optimizer steps."""
    early_stopping_patience: Count = 3
    """Stop when validation loss has not improved for this many evaluations; the best checkpoint is kept."""
    save_total_limit: Annotated[int, Field(ge=1, le=1000)] = 2
    """Checkpoints kept on disk (the best one is always kept as well)."""
    seed: int = Field(42, ge=0, le=MAX_SEED)
    """Random seed for data order, the validation split and initialisation."""
    logging_steps: Count | Auto = "auto"
    """Write a line to metrics.jsonl every N optimizer steps (auto: every step on a CPU; on a GPU every 10,
    since each log reads the loss back from the GPU and makes it wait)."""
    fused_kernels: bool | Auto = "auto"
    """Liger's fused GPU kernels (RMSNorm, SwiGLU, RoPE; `pip install 'tunesmith[gpu]'`). auto: on for a CUDA
    GPU when liger-kernel is installed and has kernels for the model's architecture; always off on a CPU."""
    report_to: list[Literal["tensorboard", "mlflow", "trackio"]] = Field(default_factory=list)
    """Experiment trackers that also get the run: its settings, per-step metrics, evaluation
    results and report (`--report-to tensorboard,mlflow,trackio`)."""
    best_metric: Literal["loss", "accuracy", "macro_f1", "reward"] | Auto = "auto"
    """Validation metric for early stopping and the best checkpoint: auto = accuracy for classify and
    reward models (pairwise), mean reward for grpo/rloo, loss otherwise."""


class EvalConfig(_Section):
    enabled: bool = True
    """Evaluate base and tuned model at the end of `tunesmith train` when there is a test set (--no-eval skips)."""
    max_rows: int | None = Field(None, ge=1)
    """Evaluate on at most this many test rows (a seeded sample) for a quicker report; empty: all of them."""
    base_rows: int = Field(100, ge=1)
    """A classifier's base model has no head and is asked to pick a label from a prompt that lists
    them all (hundreds of tokens a row): it answers a seeded sample of at most this many test rows."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Longest generated answer in tokens; empty: from the reference answers (1.5 x the longest, 16 to 512)."""
    batch_size: int = Field(16, ge=1)
    """Prompts generated together."""
    judge: str | None = None
    """LLM judge on this machine (built-in name, model folder or run) comparing base and tuned answers pairwise."""
    judge_url: str | None = None
    """LLM judge behind an OpenAI-compatible endpoint instead (key: TUNESMITH_JUDGE_KEY or OPENAI_API_KEY)."""
    judge_model: str | None = None
    """The model name the judge endpoint should run."""
    judge_rubric: str = "Which answer responds to the request more correctly and helpfully? Prefer the one that matches the reference answer when there is one."
    """What the judge compares the two answers on."""
    judge_prompts: int = Field(50, ge=1)
    """Test prompts judged (each twice, both orders)."""
    forgetting: bool = True
    """Measure forgetting: perplexity on general text shipped with tunesmith and general instruction probes."""
    forgetting_threshold: float = Field(0.1, ge=0.0)
    """Flag forgetting when general-text perplexity rose by more than this share, or probe accuracy fell by more than this."""
    keep_general: bool | None = None
    """Whether the model must stay a general assistant (`--keep-general`). Forgetting is an alarm
    only then; auto (unset) = yes for chat and generation tasks, no for a labelling task, whose
    user asked for a specialist (forgetting is then reported as information)."""
    bias: bool = True
    """Run counterfactual bias probes (names, genders, ethnicities and ages swapped)."""
    bias_threshold: float = Field(0.1, ge=0.0, le=1.0)
    """Flag bias when more than this share of counterfactual pairs get a different label or answer."""
    coverage: float = Field(0.9, gt=0.0, le=1.0)
    """Share of rows a labeller should answer: its confidence threshold is calibrated on validation rows to answer
    this share, the rest it refers to a person; the report gives accuracy at that coverage on the test rows."""
    minutes_per_item: float | None = Field(None, gt=0.0)
    """Minutes a person spends on one item today; with `items_per_week` the report estimates hours saved."""
    items_per_week: float | None = Field(None, gt=0.0)
    """Items handled per week, for the value estimate."""


class DistributedConfig(_Section):
    num_processes: int = Field(1, ge=1)
    """Training processes in all machines together: one per GPU (on CPU, processes sharing the cores).
    More than one launches the training with accelerate."""
    strategy: Literal["ddp", "fsdp", "zero2", "zero3"] = "ddp"
    """ddp: a full copy of the model per process; fsdp: parameters, gradients and optimizer state sharded
    (PyTorch FSDP2); zero2/zero3: DeepSpeed ZeRO sharding optimizer state and gradients (zero2) and
    the parameters too (zero3). The sharding strategies need CUDA GPUs (zero2/zero3 also DeepSpeed)."""

    @model_validator(mode="after")
    def _fsdp_needs_processes(self):
        # ZeRO-3 on one GPU still offloads to CPU memory; FSDP on one process only costs time.
        if self.strategy == "fsdp" and self.num_processes < 2:
            raise ValueError("fsdp shards the model across processes; set num_processes to 2 or more")
        return self


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Where the data comes from and how to read it."""
    method: MethodConfig = Field(default_factory=MethodConfig)
    """How the model is adapted."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimisation settings."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """How the tuned model is measured against its base."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """How many processes train, and how the model is spread over them."""
    domain: Literal["legal", "medical", "finance", "support"] | None = None
    """A domain pack (`tunesmith domains`): its compliance profile gates the data, its probes and
    abstention join the evaluation, its regulated-use section joins the model card, and the run
    is written to the audit trail."""
    template: str | None = Field(None, max_length=100)
    """A task template of the domain pack (e.g. `clause-classification`): its system prompt and
    label set; needs `domain`."""
    reasons: dict[str, str] = Field(default_factory=dict)
    """Why each "auto" value was chosen (filled by the resolver), keyed like `train.learning_rate`."""
    sources: dict[str, str] = Field(default_factory=dict)
    """Where each value set on top of the defaults or the config file came from (`options`, a job's
    hyperparameters, an HPO trial), keyed like `train.learning_rate`; see `apply_overrides`."""

    def has_test_set(self) -> bool:
        """Whether a resolved run config has a test set: a test file, or rows held out of `train`."""
        return bool(self.data.test or (self.data.test_split != "auto" and float(self.data.test_split) > 0))

    def unresolved(self) -> list[str]:
        """Names of fields still set to "auto"."""
        out = []
        for section in ("data", "train"):
            for key, value in getattr(self, section).model_dump().items():
                if value == "auto":
                    out.append(f"{section}.{key}")
        return out


# Fields of the run itself rather than of a section, which `apply_overrides` sets by their plain name.
TOP_LEVEL_FIELDS = ("domain", "template")


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run config; a bad file or value is one ConfigError sentence."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}; fix the syntax.") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with sections model, data, method, train.")
    return parse_config(raw, source=str(path))


def apply_overrides(
    config: RunConfig, overrides: Mapping[str, Any], source: str, names: Mapping[str, str] | None = None
) -> RunConfig:
    """The one way to set values on a config (the CLI's options, an API job's hyperparameters,
    an HPO trial's values, `auto`'s choices): a copy of `config` with each dotted field
    (`train.learning_rate`, or a plain name of `TOP_LEVEL_FIELDS` such as `domain`) set, validated as a whole so the rules between fields hold, and
    `sources[field] = source` recorded. None values are skipped (an option not given). A bad
    value is a ConfigError naming `source: field`, or `names[field]` (what the caller calls the
    field: `hyperparameter 'n_epochs'`)."""
    raw = config.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        if key in TOP_LEVEL_FIELDS:  # a run-wide field, not in a section: `domain`, `template`
            raw[key] = value
            raw["sources"][key] = source
            continue
        section, _, field = key.partition(".")
        part = RunConfig.model_fields.get(section)
        if part is None or not field or field not in part.annotation.model_fields:
            raise ConfigError(f"{(names or {}).get(key) or f'{source}: {key}'} is not a config field.")
        raw[section][field] = value
        raw["sources"][key] = source
    return parse_config(raw, source, names)


def parse_config(raw: dict, source: str = "config", names: Mapping[str, str] | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        field = _field_name(err)
        # A field typed `X | Auto` fails once per union member; say that "auto" is allowed too.
        auto_ok = any(e["type"] == "literal_error" and _field_name(e) == field and "'auto'" in e["msg"] for e in errors)
        hint = ' (or "auto")' if auto_ok and err["type"] != "literal_error" else ""
        msg = err["msg"].removeprefix("Value error, ")
        where = (names or {}).get(field) or f"{source}: {field}"
        raise ConfigError(f"{where}: {msg}{hint}.") from exc


def _field_name(err: dict) -> str:
    """Dotted config field of a pydantic error, without the union-member tags pydantic adds
    to `loc` (`train.batch_size`, not `train.batch_size.int`)."""
    parts: list[str] = []
    model: type[BaseModel] | None = RunConfig
    for part in err["loc"]:
        if model is not None and part in model.model_fields:
            parts.append(str(part))
            annotation = model.model_fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        else:
            if model is not None and err["type"] == "extra_forbidden":
                parts.append(str(part))  # the unknown key itself is what to fix
            break
    return ".".join(parts) or "config"


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

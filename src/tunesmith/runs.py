"""The run folder: the one place that knows its layout. Every reader (recipes, evaluation,
export, the worker, the API, the CLI) goes through `RunDir` or the names here.

    RUN/config.yaml        the resolved config (every "auto" value filled, with its reason)
    RUN/data_card.json     the data gate's findings
    RUN/metrics.jsonl      one line per logged step
    RUN/checkpoints/       resumable checkpoints
    RUN/adapter/ | model/  the trained adapter, or full weights
    RUN/merged/            the adapter folded into its base, written when first needed
    RUN/labels.json        a classifier's label names
    RUN/abstention.json    a labeller's confidence threshold, calibrated by evaluation (below it: refer to a person)
    RUN/run.json           the training summary
    RUN/eval/              results.json, answers.jsonl, test.jsonl
    RUN/report.html, RUN/MODEL_CARD.md
    RUN/exports/           downloads and exports built from the run
    RUN/audit.json         a domain run's audit-trail entries (ids and hashes; the log is elsewhere)
    RUN/<stage>/           for a multi-stage run, one complete run folder per stage
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.config import RunConfig, load_config

CONFIG_FILE = "config.yaml"
ADAPTER_DIR = "adapter"  # adapter weights of a finished run
MODEL_DIR = "model"  # full weights of a finished full fine-tune
MERGED_DIR = "merged"  # an adapter folded into its base, written when first needed
INIT_ADAPTER_DIR = "adapter-init"  # PiSSA/OLoRA adapter before training, to convert the result
RUN_INFO = "run.json"
LABELS_FILE = "labels.json"
ABSTENTION_FILE = "abstention.json"  # the calibrated confidence threshold (evaluate/abstention.py)
METRICS_FILE = "metrics.jsonl"
DATA_CARD_FILE = "data_card.json"
EVAL_DIR = "eval"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
MODEL_CARD_FILE = "MODEL_CARD.md"
AUDIT_FILE = "audit.json"  # the audit-trail entries of a domain run (domains/audit.py)


class TestSet(BaseModel):
    source: str
    """Where the test rows came from (a file, or the rows held out of the training file)."""
    rows: int
    file: str
    """The rows as scored, relative to the run folder."""


class EvalResults(BaseModel):
    """The before/after evaluation of a run: `RUN/eval/results.json`. Built by `evaluate.run`,
    read by the CLI, the worker, the API, the report and the model card. The nested sections
    (labels, judge, forgetting, bias, value, overfitting) are documented in `evaluate/run.py`."""

    model_config = ConfigDict(extra="allow")

    run: str
    task: str
    """What was measured: labels, generation, tool_calls, text (perplexity), preference or reward."""
    stage: str
    base_model: str
    tuned_model: str
    test: TestSet
    created: str
    metrics: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    """side ("base", "tuned") -> metric name -> value."""
    labels: dict | None = None
    tool_calls: dict | None = None
    """The tool_calls task: call_rows and text_rows (test rows expecting a call or a text answer) and
    per_tool (side -> function -> rows, tool_name_accuracy, tool_call_exact_match)."""
    judge: dict | None = None
    forgetting: dict | None = None
    bias: dict | None = None
    value: dict | None = None
    abstention: dict | None = None
    """A labeller's accuracy against coverage when it refers its least confident rows to a person
    (the tuned model; shape in `evaluate.abstention.abstention_results`)."""
    domain: dict | None = None
    """The domain pack's probes, when the run names a domain (shape in `evaluate.domain.domain_results`)."""
    grounding: dict | None = None
    """Generation rows with a context: each model's statements the context does not support and
    invented citations (shape in `evaluate.grounding`)."""
    skipped: dict[str, str] = Field(default_factory=dict)
    """What was not measured, and why."""
    overfitting: dict | None = None
    samples: list[dict] = Field(default_factory=list)
    seconds: float | None = None

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


class TrainSummary(BaseModel):
    """What training a run (or one stage of it) did: `RUN/run.json`. Built by the recipes, read
    by the CLI, the worker, the API, the report and the model card. A figure a recipe does not
    measure is left unset, and `to_json` leaves it out, so each file holds only what was measured."""

    model_config = ConfigDict(extra="ignore")

    task: str | None = None
    """The stage trained: sft, pretrain, classify, reward, dpo, ..."""
    stage: str | None = None
    """Set on each entry of `stages`: the stage's name (its folder in the run)."""
    base_model: str | None = None
    method: str | None = None
    """The adapter (lora, dora, ..., full)."""
    weights: str | None = None
    """The folder the weights were saved to: `adapter` or `model`."""
    trainable_params: int | None = None
    total_params: int | None = None
    global_step: int | None = None
    train_loss: float | None = None
    best_checkpoint: str | None = None
    train_runtime_s: float | None = None
    tokens_seen: int | None = None
    # Speed, measured over training time (evaluation and checkpoint saving left out): train/speed.py.
    device: str | None = None
    """`cpu`, or the CUDA GPU's name."""
    training_seconds: float | None = None
    """The training time the speed figures are measured over."""
    tokens_per_s: float | None = None
    """Real (non-padding) tokens trained on per second."""
    peak_memory_gb: float | None = None
    """Peak memory in GiB, of the kind `peak_memory_kind` says."""
    peak_memory_kind: str | None = None
    """`cuda`: the GPU's peak allocated memory during training; `cpu_rss`: the process's peak resident memory."""
    mfu: float | None = None
    """Model FLOPs utilisation, 0-1, on a GPU of known peak: tokens/s x flops_per_token / peak FLOP/s."""
    flops_per_token: float | None = None
    """Training FLOPs per token: 4 x parameters in matrix multiplies + 2 x trainable parameters."""
    peak_tflops: float | None = None
    """The GPU's peak dense bf16 TFLOP/s the MFU is measured against."""
    attention: str | None = None
    """The attention implementation: sdpa, flash_attention_2, ..."""
    fused_kernels: str | None = None
    """The fused kernels applied (Liger's), when any."""
    train_rows: int | None = None
    validation_rows: int | None = None
    truncated_rows: int | None = None
    skipped_rows: int | None = None
    train_tokens: int | None = None
    train_loss_tokens: int | None = None
    # Figures of particular stages.
    labels: int | None = None
    """classify: the number of labels."""
    best_eval_loss: float | None = None
    best_eval_perplexity: float | None = None
    eval_accuracy: float | None = None
    eval_macro_f1: float | None = None
    beta: float | None = None
    reward_accuracy: float | None = None
    reward_margin: float | None = None
    pairwise_accuracy: float | None = None
    mean_margin: float | None = None
    train_blocks: int | None = None
    replay_blocks: int | None = None
    """pretrain: general-text blocks mixed in against forgetting (`data.replay_ratio`)."""
    replay_rows: int | None = None
    """sft: general chat rows mixed into the training rows against forgetting (`data.replay_ratio`)."""
    validation_blocks: int | None = None
    rewards: list[str] | None = None
    reward_start: float | None = None
    reward_end: float | None = None
    kl_end: float | None = None
    best_eval_reward: float | None = None
    # A multi-stage run: every stage's summary, the last one's figures on top.
    stages: list[TrainSummary] | None = None
    final_stage: str | None = None
    evaluation: EvalResults | None = None
    """The before/after evaluation, when the run had a test set (not written to run.json)."""

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True, exclude={"evaluation"})


@dataclass(frozen=True)
class RunDir:
    """A run folder (or one stage's folder of a multi-stage run)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path).expanduser())

    @property
    def exists(self) -> bool:
        """Whether the folder holds a run (tunesmith wrote its config)."""
        return self.path.is_dir() and (self.path / CONFIG_FILE).exists()

    @cached_property
    def config(self) -> RunConfig:
        return load_config(self.path / CONFIG_FILE)

    @property
    def stage(self) -> str:
        """The stage whose weights this folder holds (the last of its stages)."""
        return self.config.method.stages[-1]

    @property
    def final(self) -> RunDir:
        """The folder holding the run's final weights: the run itself, or for a multi-stage run
        (`stages: [pretrain, sft]`) the folder of its last stage."""
        stages = self.config.method.stages
        return RunDir(self.path / stages[-1]) if len(stages) > 1 else self

    def stage_dir(self, stage: str) -> RunDir:
        return RunDir(self.path / stage)

    @property
    def adapter(self) -> Path | None:
        """The trained adapter folder, when the run trained one and finished."""
        return self.path / ADAPTER_DIR if (self.path / ADAPTER_DIR).is_dir() else None

    @property
    def full_weights(self) -> Path | None:
        """The full weights folder of a full fine-tune, when it finished."""
        return self.path / MODEL_DIR if (self.path / MODEL_DIR).is_dir() else None

    @property
    def weights(self) -> Path | None:
        """The adapter or the full weights, whichever the run trained; None before it finished."""
        return self.full_weights or self.adapter

    @property
    def merged(self) -> Path:
        return self.path / MERGED_DIR

    @property
    def init_adapter(self) -> Path:
        return self.path / INIT_ADAPTER_DIR

    @property
    def labels_file(self) -> Path:
        return self.path / LABELS_FILE

    @property
    def labels(self) -> list[str] | None:
        """A classifier's label names, in head order."""
        return json.loads(self.labels_file.read_text()) if self.labels_file.exists() else None

    @property
    def abstention_file(self) -> Path:
        return self.path / ABSTENTION_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def data_card_file(self) -> Path:
        return self.path / DATA_CARD_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / RUN_INFO

    def summary(self) -> TrainSummary | None:
        """What training wrote (`run.json`), or None before it finished."""
        if not self.summary_file.exists():
            return None
        return TrainSummary.model_validate_json(self.summary_file.read_text())

    def results(self) -> EvalResults | None:
        """The last evaluation's results (`eval/results.json`), or None before one ran."""
        if not self.results_file.exists():
            return None
        return EvalResults.model_validate_json(self.results_file.read_text())

    @property
    def exports(self) -> Path:
        """Built downloads and exports of the run; inside it, so deleting the run deletes them."""
        return self.path / "exports"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def results_file(self) -> Path:
        return self.path / EVAL_DIR / RESULTS_FILE

    @property
    def report_file(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def model_card_file(self) -> Path:
        return self.path / MODEL_CARD_FILE

    @property
    def audit_file(self) -> Path:
        """The ids, events and hashes of the audit-trail entries written about this run."""
        return self.path / AUDIT_FILE

    def complete_checkpoints(self) -> list[Path]:
        """The run's checkpoints, oldest first, that were written to the end: the trainer writes
        `trainer_state.json` last, so a process killed while saving leaves one without it (or
        with it cut short), and resuming from that would fail."""
        complete = []
        for path in self.checkpoints.glob("checkpoint-*"):
            try:
                json.loads((path / "trainer_state.json").read_text())
                complete.append(path)
            except (OSError, ValueError):
                continue
        return sorted(complete, key=lambda p: int(p.name.split("-")[-1]))


def is_run_dir(path: str | Path) -> bool:
    return RunDir(Path(path)).exists


def final_stage_dir(path: str | Path) -> Path:
    """The folder holding a run's final weights (see `RunDir.final`)."""
    return RunDir(Path(path)).final.path


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    return RunDir(Path(run_dir)).complete_checkpoints()

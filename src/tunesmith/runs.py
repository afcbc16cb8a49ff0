"""The run folder: the one place that knows its layout. Every reader (recipes, evaluation,
export, the worker, the API, the CLI) goes through `RunDir` or the names here.

    RUN/config.yaml        the resolved config (every "auto" value filled, with its reason)
    RUN/data_card.json     the data gate's findings
    RUN/metrics.jsonl      one line per logged step
    RUN/checkpoints/       resumable checkpoints
    RUN/adapter/ | model/  the trained adapter, or full weights
    RUN/merged/            the adapter folded into its base, written when first needed
    RUN/labels.json        a classifier's label names
    RUN/run.json           the training summary
    RUN/eval/              results.json, answers.jsonl, test.jsonl
    RUN/report.html, RUN/MODEL_CARD.md
    RUN/<stage>/           for a multi-stage run, one complete run folder per stage
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tunesmith.config import RunConfig, load_config

CONFIG_FILE = "config.yaml"
ADAPTER_DIR = "adapter"  # adapter weights of a finished run
MODEL_DIR = "model"  # full weights of a finished full fine-tune
MERGED_DIR = "merged"  # an adapter folded into its base, written when first needed
INIT_ADAPTER_DIR = "adapter-init"  # PiSSA/OLoRA adapter before training, to convert the result
RUN_INFO = "run.json"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.jsonl"
DATA_CARD_FILE = "data_card.json"
EVAL_DIR = "eval"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
MODEL_CARD_FILE = "MODEL_CARD.md"


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
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def data_card_file(self) -> Path:
        return self.path / DATA_CARD_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / RUN_INFO

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

"""Run a config's stages in order (`method.stages`, e.g. `[pretrain, sft]`).

One stage is one recipe writing into the run directory itself. Several stages each get a
folder of their own (`RUN/pretrain/`, `RUN/sft/`), a complete run directory, and each
stage starts from the previous stage's weights: an adapter is merged into its base and
saved as `RUN/<stage>/merged/`, full weights are used as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config import RunConfig, load_config, save_config
from tunesmith.errors import ConfigError
from tunesmith.train.common import MODEL_DIR, PROMPT_LEARNING, RUN_INFO

MERGED_DIR = "merged"


def recipe(stage: str):
    from tunesmith.train.classify import train_classify
    from tunesmith.train.pretrain import train_pretrain
    from tunesmith.train.sft import train_sft

    return {"pretrain": train_pretrain, "sft": train_sft, "classify": train_classify}[stage]


def train(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> dict:
    """Train every stage of `config` into `run_dir`; returns the last stage's summary (a
    multi-stage run also writes `RUN/run.json` with every stage's summary)."""
    run_dir = Path(run_dir)
    if resume and (run_dir / "config.yaml").exists():
        config = load_config(run_dir / "config.yaml")
    stages = config.method.stages
    if len(stages) == 1:
        if stages == ["pretrain"] and not config.data.train and config.data.pretrain:
            config = config.model_copy(deep=True)
            config.data.train = config.data.pretrain
        return recipe(stages[0])(config, run_dir, callbacks, resume)

    if not resume:
        _check_multistage(config)
        if (run_dir / "config.yaml").exists():
            raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --output.")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    summaries: list[dict] = []
    model = config.model.name
    for i, stage in enumerate(stages):
        stage_dir = run_dir / stage
        for cb in callbacks or []:
            if hasattr(cb, "description"):
                cb.description = f"{stage} ({i + 1}/{len(stages)})"
        if (stage_dir / RUN_INFO).exists():  # finished before an interruption
            summary = json.loads((stage_dir / RUN_INFO).read_text())
        else:
            stage_config = config.model_copy(deep=True)
            stage_config.method.stages = [stage]
            stage_config.model.name = model
            if stage == "pretrain":
                stage_config.data.train = config.data.pretrain
                stage_config.data.validation = None
            stage_resume = resume and (stage_dir / "config.yaml").exists()
            summary = recipe(stage)(stage_config, stage_dir, callbacks, stage_resume)
        summaries.append({"stage": stage, **summary})
        if i < len(stages) - 1:
            model = str(_weights_for_next_stage(stage_dir))
    (run_dir / RUN_INFO).write_text(json.dumps({"stages": summaries, "final_stage": stages[-1]}, indent=2))
    return {**summaries[-1], "stages": summaries}


def _check_multistage(config: RunConfig) -> None:
    """Fail before anything trains when a multi-stage config cannot work."""
    if "pretrain" in config.method.stages:
        if not config.data.pretrain:
            raise ConfigError("stages start with pretrain: name the raw-text file with --pretrain-data (data.pretrain).")
        if not config.data.train:
            raise ConfigError(
                f"stages {','.join(config.method.stages)}: name the data of the later stage with --data (data.train)."
            )
    if config.method.adapter in PROMPT_LEARNING:
        raise ConfigError(
            f"{config.method.adapter} tuning adds virtual tokens rather than changing weights, so a later stage cannot "
            "start from it; use --adapter lora (or full) for multi-stage runs."
        )


def _weights_for_next_stage(stage_dir: Path) -> Path:
    """A model folder holding what `stage_dir` trained: its full weights, or its adapter
    merged into its base (written once)."""
    if (stage_dir / MODEL_DIR).is_dir():
        return stage_dir / MODEL_DIR
    merged = stage_dir / MERGED_DIR
    if not (merged / "config.json").exists():
        from tunesmith.serve.engine import load_for_inference

        loaded = load_for_inference(str(stage_dir))
        loaded.model.save_pretrained(str(merged))
        loaded.tokenizer.save_pretrained(str(merged))
    return merged

"""Run a config's stages in order (`method.stages`, e.g. `[pretrain, sft]`).

One stage is one recipe writing into the run directory itself. Several stages each get a
folder of their own (`RUN/pretrain/`, `RUN/sft/`), a complete run directory, and each
stage starts from the previous stage's weights: an adapter is merged into its base and
saved as `RUN/<stage>/merged/`, full weights are used as they are.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import PREFERENCE_STAGES, RL_STAGES, RunConfig
from tunesmith.data.formats import load_data
from tunesmith.data.rows import (
    load_chat_rows,
    load_labelled,
    load_pairs,
    load_prompts,
    load_texts,
)
from tunesmith.data.splits import resolve_test_split, training_data
from tunesmith.errors import ConfigError
from tunesmith.export.merge import save_merged
from tunesmith.models import load_tokenizer
from tunesmith.runs import RunDir, TrainSummary
from tunesmith.train import distributed
from tunesmith.train.auto import resolve
from tunesmith.train.callbacks import RichProgressCallback
from tunesmith.train.classify import train_classify
from tunesmith.train.common import PROMPT_LEARNING, begin_run, write_summary
from tunesmith.train.distributed import Cluster
from tunesmith.train.preference import train_preference
from tunesmith.train.pretrain import train_pretrain
from tunesmith.train.reward import train_reward
from tunesmith.train.rl import load_reward_functions, train_rl
from tunesmith.train.sft import train_sft


def recipe(stage: str):
    recipes = {"pretrain": train_pretrain, "sft": train_sft, "classify": train_classify, "reward": train_reward}
    return recipes.get(stage) or (train_preference if stage in PREFERENCE_STAGES else train_rl)


def stage_data(config: RunConfig, stage: str) -> str | None:
    """The data file a stage of a multi-stage run trains on."""
    d = config.data
    if stage == "pretrain":
        return d.pretrain
    if stage == "reward" or stage in PREFERENCE_STAGES:
        return d.preference or d.train
    if stage in RL_STAGES:
        return d.prompts or d.preference or d.train
    return d.train


def train_run(
    config: RunConfig, run_dir: Path, callbacks: list | None = None, resume: bool = False, cluster: Cluster | None = None
) -> TrainSummary:
    """Train every stage of `config` into `run_dir` and return the last stage's summary. A
    config with `distributed.num_processes` above 1 trains in that many launched processes
    (`train.distributed`, on this machine's part of `cluster`); of the callbacks only the
    progress bar is carried over to them."""
    if resume and RunDir(run_dir).exists:
        config = RunDir(run_dir).config
    if distributed.wanted(config):
        progress = any(isinstance(cb, RichProgressCallback) for cb in callbacks or [])
        return distributed.launch(config, run_dir, resume, progress, cluster)
    return train_stages(config, run_dir, callbacks, resume)


def train_stages(config: RunConfig, run_dir: Path, callbacks: list | None, resume: bool) -> TrainSummary:
    """Train every stage in this process (or in each launched process)."""
    run = RunDir(run_dir)
    if resume and run.exists:
        config = run.config
    stages = config.method.stages
    if len(stages) == 1:
        if resume and run.summary_file.exists():
            # Trained to the end before an interruption (during the evaluation): resuming the
            # trainer would run one step past max_steps.
            return run.summary()
        if not config.data.train and stage_data(config, stages[0]):
            config = config.model_copy(deep=True)
            config.data.train = stage_data(config, stages[0])
        return recipe(stages[0])(config, run_dir, callbacks, resume)

    if not resume:
        _check_multistage(config)
        if run.exists and not distributed.launched():
            raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --output.")
        if config.data.test_split == "auto" and config.data.train:
            # Decided once for the whole run, so every stage on data.train holds out the same rows.
            config = resolve_test_split(config, len(load_data(config.data.train, columns=config.data.columns).records))
        begin_run(config, run_dir)
    summaries: list[TrainSummary] = []
    model = config.model.name  # the policy: each stage but reward starts from, and advances, it
    for i, stage in enumerate(stages):
        stage_dir = run.stage_dir(stage)
        for cb in callbacks or []:
            if hasattr(cb, "description"):
                cb.description = f"{stage} ({i + 1}/{len(stages)})"
        if stage_dir.summary_file.exists():  # finished before an interruption
            summary = stage_dir.summary()
        else:
            stage_config = config.model_copy(deep=True)
            stage_config.method.stages = [stage]
            stage_config.model.name = model
            stage_config.data.train = stage_data(config, stage)
            if stage_config.data.train != config.data.train:
                # The validation file and the test split belong to data.train.
                stage_config.data.validation = None
                stage_config.data.test_split = 0.0
            if stage in RL_STAGES and "reward" in stages:
                stage_config.method.reward_model = str(run.stage_dir("reward").path)
            if stage == "classify" and {"pretrain", "sft"} & set(stages):
                # The replay belongs to the stages that learn from general data; a head cannot.
                stage_config.data.replay_ratio = 0.0
            stage_resume = resume and stage_dir.exists
            summary = recipe(stage)(stage_config, stage_dir.path, callbacks, stage_resume)
        summaries.append(summary.model_copy(update={"stage": stage}))
        # A reward model scores the policy; it does not become it (InstructGPT's layout: it
        # starts from the SFT weights, and RL starts from them too).
        if i < len(stages) - 1 and stage != "reward":
            model = str(_weights_for_next_stage(stage_dir))
    write_summary(run_dir, TrainSummary(stages=summaries, final_stage=stages[-1]))
    return summaries[-1].model_copy(update={"stages": summaries})


def _check_multistage(config: RunConfig) -> None:
    """Fail before anything trains when a multi-stage config cannot work."""
    if "pretrain" in config.method.stages:
        if not config.data.pretrain:
            raise ConfigError("stages start with pretrain: name the raw-text file with --pretrain-data (data.pretrain).")
        if not config.data.train:
            raise ConfigError(
                f"stages {','.join(config.method.stages)}: name the data of the later stage with --data (data.train)."
            )
    rl = [s for s in config.method.stages if s in RL_STAGES]
    if rl:
        m = config.method
        for spec in m.reward_functions:
            load_reward_functions(spec)
        if "reward" not in m.stages and not (m.reward_model or m.reward_functions or m.judge_url):
            raise ConfigError(
                f"{rl[0]} needs a reward: add a reward stage (--stages ...,reward,{rl[0]}), or give --reward-model, "
                "--reward-fn or --judge-url."
            )
    if config.method.adapter in PROMPT_LEARNING:
        raise ConfigError(
            f"{config.method.adapter} tuning adds virtual tokens rather than changing weights, so a later stage cannot "
            "start from it; use --adapter lora (or full) for multi-stage runs."
        )


def _weights_for_next_stage(stage_dir: RunDir) -> Path:
    """A model folder holding what `stage_dir` trained: its full weights, or its adapter
    merged into its base (written once)."""
    if stage_dir.full_weights:
        return stage_dir.full_weights
    if distributed.is_main_process():
        save_merged(stage_dir.path)
    distributed.barrier()  # the other processes start the next stage from the merged weights
    return stage_dir.merged


def preview(config: RunConfig) -> RunConfig:
    """`config` with the "auto" values of its last stage resolved as that stage's recipe
    resolves them when it starts (same data, split and tokenizer), without loading the model
    or training: what the web UI shows before launch. Values that depend on the hardware are
    this machine's; a worker elsewhere resolves them again for its own."""
    stage = config.method.stages[-1]
    config = config.model_copy(deep=True)
    config.data.train = stage_data(config, stage) or config.data.train
    config, data = training_data(config)
    if stage == "sft":
        kind, rows = "chat", load_chat_rows(data, config)
    elif stage == "classify":
        kind, rows = "classify", load_labelled(data)
    elif stage == "pretrain":
        kind, rows = "pretrain", [{"text": t} for t in load_texts(data)]
    elif stage == "reward":
        kind, rows = "reward", load_pairs(data)
    elif stage in PREFERENCE_STAGES:
        kind, rows = "preference", load_pairs(data, kto=stage == "kto")
    else:
        kind, rows = "rl", load_prompts(data, config)
    return resolve(config, rows, load_tokenizer(config.model.name), bool(config.data.validation), kind=kind)

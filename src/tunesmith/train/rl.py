"""Online reinforcement learning: GRPO and RLOO on TRL's trainers. For each prompt the
model samples a group of answers; each answer is rewarded, compared with the rest of its
group, and made more or less likely, with a KL penalty that keeps the policy near the
reference model (with an adapter: the same weights, adapter off).

Rewards come from any mix of: a reward-model run (`method.reward_model`, or the reward
stage of the same run), Python functions (built-in `exact_match`, `contains_answer`,
`length`, or the user's own file), and an LLM judge behind an OpenAI-compatible endpoint.

Reads top to bottom: load prompts (with the reference answer where the data has one),
split, resolve "auto" settings, build the rewards, build the model, train, save.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from transformers import TrainerCallback

from tunesmith.config import RunConfig
from tunesmith.data.answers import contains_answer as answer_contains
from tunesmith.data.answers import same_answer
from tunesmith.data.rows import fit_prompt, load_prompts
from tunesmith.data.splits import split_validation, training_data
from tunesmith.data.synth import parse_score
from tunesmith.errors import ConfigError
from tunesmith.inference.reward import load_reward_model
from tunesmith.inference.teacher import make_teacher
from tunesmith.models import load_tokenizer
from tunesmith.runs import TrainSummary
from tunesmith.train.auto import resolve
from tunesmith.train.common import (
    begin_run,
    common_args,
    gate_data,
    load_base,
    run_callbacks,
    run_figures,
    save_weights,
    start_run,
    trainable_parameters,
    wrap_model,
    write_summary,
)

SAMPLES_FILE = "samples.jsonl"  # a few answers with their rewards at every evaluation
# Each evaluation samples num_generations answers for every validation prompt; 32 prompts
# give a usable mean reward without evaluation costing more than training on a CPU.
EVAL_PROMPTS = 32


# --------------------------------------------------------------------------- prompts


# --------------------------------------------------------------------------- rewards


def _text(completion) -> str:
    """The text of a completion (conversational: a list with one assistant message)."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return str(completion)


def exact_match(completions, answer, **kwargs) -> list[float]:
    """1.0 when the answer equals the row's reference answer, compared as the evaluation's
    `exact_match` metric compares them (`tunesmith.data.answers.normalize`: case, spacing and
    a trailing full stop or exclamation mark ignored)."""
    return [float(same_answer(_text(c), a)) if a else None for c, a in zip(completions, answer)]


def contains_answer(completions, answer, **kwargs) -> list[float]:
    """1.0 when the answer contains the reference answer (both normalised as in `exact_match`)."""
    return [float(answer_contains(_text(c), a)) if a else None for c, a in zip(completions, answer)]


def length(completions, answer, **kwargs) -> list[float]:
    """Brevity: 1.0 up to the reference answer's length in words (50 without one), falling
    off in proportion beyond it."""
    out = []
    for c, a in zip(completions, answer):
        words, target = len(_text(c).split()), max(1, len(a.split()) if a else 50)
        out.append(1.0 if words <= target else target / words)
    return out


BUILTIN_REWARDS = {"exact_match": exact_match, "contains_answer": contains_answer, "length": length}


def load_reward_functions(spec: str) -> list:
    """The functions one `method.reward_functions` entry names: a built-in, `FILE.py` (its
    `reward_*` functions) or `FILE.py:NAME`."""
    if spec in BUILTIN_REWARDS:
        return [BUILTIN_REWARDS[spec]]
    path, _, name = spec.partition(":")
    if not path.endswith(".py"):
        raise ConfigError(
            f"reward function {spec!r} is neither built in ({', '.join(BUILTIN_REWARDS)}) nor a .py file; "
            "give FILE.py or FILE.py:NAME."
        )
    if not Path(path).is_file():
        raise ConfigError(f"reward function file {path} does not exist; check the path.")
    module_spec = importlib.util.spec_from_file_location(f"tunesmith_rewards_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report it in one line
        raise ConfigError(f"{path} failed to import: {type(exc).__name__}: {exc}.") from exc
    if name:
        if not callable(getattr(module, name, None)):
            raise ConfigError(f"{path} defines no function {name}; check the name after the colon.")
        return [getattr(module, name)]
    found = [f for n, f in vars(module).items() if n.startswith("reward_") and callable(f)]
    if not found:
        raise ConfigError(f"{path} defines no function named reward_*; name them so, or give {path}:NAME.")
    return found


def reward_model_function(run: str):
    """A reward function backed by a trained reward model (`tunesmith train --method reward`)."""
    rm = load_reward_model(run)

    def reward_model(prompts, completions, **kwargs) -> list[float]:
        conversations = [p + [{"role": "assistant", "content": _text(c)}] for p, c in zip(prompts, completions)]
        return rm.score(conversations)

    return reward_model


def judge_function(url: str, model: str | None, rubric: str, key_env: str | None = None):
    """A reward function asking an LLM judge behind an OpenAI-compatible endpoint for a 1-10
    score, scaled to 0-1 (None, which TRL skips, when it gives no number). Its key comes from
    the environment variable `key_env`, else TUNESMITH_JUDGE_KEY, else OPENAI_API_KEY."""
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise ConfigError(f"The judge's key variable {key_env} is not set in this worker's environment; set it.")
    else:
        key = os.environ.get("TUNESMITH_JUDGE_KEY") or os.environ.get("OPENAI_API_KEY")
    judge = make_teacher(url=url, endpoint_model=model, key=key, what="judge")

    def llm_judge(prompts, completions, **kwargs) -> list[float | None]:
        asks = []
        for p, c in zip(prompts, completions):
            dialogue = "\n".join(f"{m['role']}: {m['content']}" for m in p)
            asks.append([{"role": "user", "content": (
                f"Rate the assistant's final answer from 1 (worst) to 10 (best). {rubric}\n\n"
                f"Conversation:\n{dialogue}\n\nAnswer:\n{_text(c)}\n\nReply with the number only."
            )}])
        scores = [parse_score(a) for a in judge.complete(asks, temperature=0.0, max_new_tokens=8)]
        return [None if s is None else (s - 1) / 9 for s in scores]

    return llm_judge


def build_rewards(config: RunConfig) -> list:
    """Every reward source the config names; an error when it names none."""
    m = config.method
    rewards = [f for spec in m.reward_functions for f in load_reward_functions(spec)]
    if m.reward_model:
        rewards.append(reward_model_function(m.reward_model))
    if m.judge_url:
        rewards.append(judge_function(m.judge_url, m.judge_model, m.judge_rubric, m.judge_key_env))
    if not rewards:
        raise ConfigError(
            f"{m.stages[-1]} needs a reward: --reward-model RUN (a reward-model run), --reward-fn "
            "exact_match|contains_answer|length|FILE.py, or --judge-url URL --judge-model NAME."
        )
    return rewards


# --------------------------------------------------------------------------- samples


class SamplesCallback(TrainerCallback):
    """At every evaluation, answer a few validation prompts greedily and write the answers with
    their rewards to `samples.jsonl`, so a run shows what its reward is teaching."""

    def __init__(self, path: Path, rows: list[dict], rewards: list, tokenizer, max_new_tokens: int):
        self.path, self.rows, self.rewards = path, rows, rewards
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        import torch

        if model is None or not self.rows:
            return
        tok = self.tokenizer
        tok.padding_side = "left"
        texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in self.rows]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model.train(was_training)
        answers = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": a.strip()}] for a in answers]
        prompts = [r["prompt"] for r in self.rows]
        kwargs = {"answer": [r["answer"] for r in self.rows]}
        scores = {f.__name__: f(prompts=prompts, completions=completions, **kwargs) for f in self.rewards}
        with self.path.open("a") as f:
            for i, r in enumerate(self.rows):
                line = {"step": state.global_step, "prompt": r["prompt"][-1]["content"], "answer": answers[i].strip(),
                        "rewards": {name: values[i] for name, values in scores.items()}}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- recipe


def train_rl(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> TrainSummary:
    """Optimise `config.model.name` against the configured rewards on the prompts of
    `config.data.train`, by GRPO or RLOO (the last stage). Returns a summary (also in
    `run.json`) with the mean reward at the start and the end of training."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    run_dir = Path(run_dir)
    config, checkpoint = start_run(config, run_dir, resume)
    method = config.method.stages[-1]
    rewards = build_rewards(config)  # a bad reward spec fails before anything is written
    config, train_data = training_data(config)
    rows = load_prompts(train_data, config)
    val_rows = load_prompts(config.data.validation, config) if config.data.validation else None
    tokenizer = load_tokenizer(config.model.name)
    card = None if resume else gate_data(config, tokenizer)
    config = resolve(config, rows, tokenizer, val_rows is not None, kind="rl")
    if val_rows is None:
        rows, val_rows = split_validation(rows, float(config.data.validation_split), config.train.seed)
    m, t = config.method, config.train
    shortened = 0
    for r in rows + val_rows:
        r["prompt"], cut = fit_prompt(r["prompt"], [], tokenizer, int(t.max_length))
        shortened += cut
    val_rows = val_rows[:EVAL_PROMPTS]

    begin_run(config, run_dir, card)

    model = wrap_model(load_base(config), config, "CAUSAL_LM", run_dir, resume)
    trainable, total = trainable_parameters(model)
    has_eval = bool(val_rows)
    trainer_class, config_class = (GRPOTrainer, GRPOConfig) if method == "grpo" else (RLOOTrainer, RLOOConfig)
    args = config_class(
        **common_args(config, run_dir, has_eval),
        num_generations=m.num_generations,
        max_completion_length=int(m.max_completion_length),
        temperature=m.temperature,
        beta=float(m.beta),
        log_completions=False,  # samples.jsonl keeps them instead of printing tables
    )
    samples = SamplesCallback(run_dir / SAMPLES_FILE, val_rows[:3], rewards, tokenizer, int(m.max_completion_length))
    trainer = trainer_class(
        model=model,
        reward_funcs=rewards,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(val_rows) if has_eval else None,
        processing_class=tokenizer,
        callbacks=run_callbacks(config, run_dir, has_eval, [samples, *(callbacks or [])]),
    )
    trainer.remove_callback(PrinterCallback)
    result = trainer.train(resume_from_checkpoint=checkpoint)

    out_dir = save_weights(trainer, tokenizer, config, run_dir)
    logged = [h for h in trainer.state.log_history if "reward" in h]
    k = max(1, min(5, len(logged) // 4))  # average a few steps: single steps are noisy

    def mean(key, part):
        values = [h[key] for h in part if key in h]
        return sum(values) / len(values) if values else None

    summary = TrainSummary(
        **run_figures(trainer, config),
        task=method,
        base_model=config.model.name,
        method=config.method.adapter,
        weights=out_dir.name,
        rewards=[f.__name__ for f in rewards],
        beta=float(m.beta),
        trainable_params=trainable,
        total_params=total,
        global_step=trainer.state.global_step,
        train_loss=result.training_loss,
        reward_start=mean("reward", logged[:k]),
        reward_end=mean("reward", logged[-k:]),
        kl_end=mean("kl", logged[-k:]),
        best_eval_reward=trainer.state.best_metric if has_eval else None,
        best_checkpoint=trainer.state.best_model_checkpoint,
        train_runtime_s=result.metrics.get("train_runtime"),
        train_rows=len(rows),
        validation_rows=len(val_rows),
        truncated_rows=shortened,
    )
    write_summary(run_dir, summary)
    return summary

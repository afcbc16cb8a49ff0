"""Reward model: a one-output sequence-classification head on the decoder, trained on
preference pairs to score the chosen answer above the rejected one (Bradley-Terry loss,
TRL's RewardTrainer), with an adapter plus the head, or fully.

Reads top to bottom: load the pairs, split, resolve "auto" settings, shorten long
conversations from the front and tokenize, build the model, train, save, and measure the
pairwise accuracy on the held-out pairs. `load_reward_model` + `score` serve `tunesmith
score` and the grpo/rloo stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import RunConfig, load_config
from tunesmith.errors import DataError, ModelError
from tunesmith.train.common import (
    begin_run,
    chat_tokens,
    common_args,
    fit_prompt,
    gate_data,
    load_base,
    load_pairs,
    run_callbacks,
    save_weights,
    split_validation,
    start_run,
    trainable_parameters,
    training_data,
    wrap_model,
    write_summary,
)


def encode_answers(prompt: list[dict], answers: list[list[dict]], tokenizer, max_length: int) -> tuple[list[list[int]], bool]:
    """Token ids of prompt + each answer, the prompt shortened from the front so that the
    longest fits (the end is kept if even that is not enough: the head reads the last token).
    Training and scoring both encode this way. Returns (ids per answer, shortened)."""
    prompt, shortened = fit_prompt(prompt, answers, tokenizer, max_length)
    return [chat_tokens(prompt + a, tokenizer)[-max_length:] for a in answers], shortened


def encode_pairs(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """`chosen_ids`/`rejected_ids` of each pair; returns the examples and how many prompts
    were shortened."""
    examples, shortened = [], 0
    for r in rows:
        (chosen, rejected), cut = encode_answers(r["prompt"], [r["chosen"], r["rejected"]], tokenizer, max_length)
        shortened += cut
        examples.append({"chosen_ids": chosen, "rejected_ids": rejected})
    return examples, shortened


def train_reward(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> dict:
    """Train a reward model on `config.data.train` (preference pairs) into `run_dir`. Returns a
    summary (also in `run.json`) with the pairwise accuracy on the validation pairs."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    from tunesmith.models import load_tokenizer
    from tunesmith.train.auto import resolve

    run_dir = Path(run_dir)
    config, checkpoint = start_run(config, run_dir, resume)
    config, train_data = training_data(config)
    rows = load_pairs(train_data)
    val_rows = load_pairs(config.data.validation, config.data.columns) if config.data.validation else None
    tokenizer = load_tokenizer(config.model.name)
    card = None if resume else gate_data(config, tokenizer, task="preference")
    config = resolve(config, rows, tokenizer, val_rows is not None, kind="reward")
    if val_rows is None:
        rows, val_rows = split_validation(rows, float(config.data.validation_split), config.train.seed)
    max_length = int(config.train.max_length)
    train_examples, cut_train = encode_pairs(rows, tokenizer, max_length)
    val_examples, cut_val = encode_pairs(val_rows, tokenizer, max_length)

    begin_run(config, run_dir, card)

    model = load_base(config, head="classify", num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    model = wrap_model(model, config, "SEQ_CLS", run_dir, resume)
    trainable, total = trainable_parameters(model)
    has_eval = bool(val_examples)
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(
            **common_args(config, run_dir, has_eval),
            max_length=max_length,
            dataset_num_proc=None,
            include_num_input_tokens_seen="non_padding",
        ),
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(val_examples) if has_eval else None,
        processing_class=tokenizer,
        callbacks=run_callbacks(config, run_dir, has_eval, callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    result = trainer.train(resume_from_checkpoint=checkpoint)

    out_dir = save_weights(trainer, tokenizer, config, run_dir)
    # Pairwise accuracy of the restored best model, measured the way `tunesmith score` does.
    model = trainer.model.eval()
    chosen = score_ids(model, tokenizer, [e["chosen_ids"] for e in val_examples])
    rejected = score_ids(model, tokenizer, [e["rejected_ids"] for e in val_examples])
    wins = [c > r for c, r in zip(chosen, rejected)]
    summary = {
        "task": "reward",
        "base_model": config.model.name,
        "method": config.method.adapter,
        "weights": out_dir.name,
        "trainable_params": trainable,
        "total_params": total,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "pairwise_accuracy": sum(wins) / len(wins) if wins else None,
        "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / len(wins) if wins else None,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_rows": len(train_examples),
        "validation_rows": len(val_examples),
        "truncated_rows": cut_train + cut_val,
    }
    write_summary(run_dir, summary)
    return summary


def score_ids(model, tokenizer, sequences: list[list[int]], batch_size: int = 16, on_batch=None) -> list[float]:
    """The reward of each token sequence, scored in length-sorted batches (`on_batch(n)`
    reports progress)."""
    import torch

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [0.0] * len(sequences)
    tokenizer.padding_side = "right"  # the head reads the last non-pad token
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [sequences[i] for i in idx]}, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            rewards = model(**batch).logits[:, 0].float().tolist()
        for i, value in zip(idx, rewards):
            out[i] = value
        if on_batch:
            on_batch(len(idx))
    return out


# --------------------------------------------------------------------------- scoring


@dataclass
class RewardModel:
    model: object
    tokenizer: object
    max_length: int

    def score(self, conversations: list[list[dict]], batch_size: int = 16, on_batch=None) -> list[float]:
        """The reward of each conversation (a prompt followed by the answer to judge). A long
        one loses its earliest turns first, exactly as the training pairs did."""
        ids = [encode_answers(c[:-1], [c[-1:]], self.tokenizer, self.max_length)[0][0] for c in conversations]
        return score_ids(self.model, self.tokenizer, ids, batch_size, on_batch)


def load_reward_model(run: str | Path) -> RewardModel:
    """Load a finished reward-model run (or the reward stage of a multi-stage run)."""
    from tunesmith.serve.engine import is_run_dir
    from tunesmith.train.classify import load_head_model

    path = Path(run).expanduser()
    if not is_run_dir(path):
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    stages = load_config(path / "config.yaml").method.stages
    if "reward" not in stages:
        raise ModelError(f"{run} is not a reward-model run; train one with `tunesmith train --method reward`.")
    if len(stages) > 1:
        path = path / "reward"
    config = load_config(path / "config.yaml")
    model, tokenizer = load_head_model(path, config, num_labels=1)
    return RewardModel(model, tokenizer, int(config.train.max_length))


def score_file(rm: RewardModel, path: str, columns: dict | None = None, on_batch=None) -> tuple[list[dict], dict]:
    """Score a file's rows. Preference pairs get `chosen_score`/`rejected_score` and the summary
    the pairwise accuracy; chat or prompt/completion rows get the `score` of their last answer.
    `on_batch(n)` reports progress over the answers scored (two per pair)."""
    from tunesmith.data.formats import load_data, to_chat

    data = load_data(path, columns=columns)
    if data.task == "preference":
        rows = data.records
        chosen = rm.score([r["prompt"] + r["chosen"] for r in rows], on_batch=on_batch)
        rejected = rm.score([r["prompt"] + r["rejected"] for r in rows], on_batch=on_batch)
        out = [{**r, "chosen_score": c, "rejected_score": j} for r, c, j in zip(rows, chosen, rejected)]
        wins = sum(c > j for c, j in zip(chosen, rejected))
        return out, {"rows": len(rows), "pairwise_accuracy": wins / len(rows),
                     "mean_margin": sum(c - j for c, j in zip(chosen, rejected)) / len(rows)}
    if data.task == "kto":
        conversations = [r["prompt"] + r["completion"] for r in data.records]
        rows = data.records
    elif data.task in ("chat", "classify"):
        conversations = [c["messages"] for c in to_chat(data)]
        rows = conversations
    else:
        raise DataError(f"{path}: scoring needs prompt/response rows (chat, prompt/completion or preference data), "
                        f"but the file holds {data.task} data.")
    scores = rm.score(conversations, on_batch=on_batch)
    out = [{**(r if isinstance(r, dict) and "prompt" in r else {"messages": r}), "score": s} for r, s in zip(rows, scores)]
    return out, {"rows": len(out), "mean_score": sum(scores) / len(scores)}

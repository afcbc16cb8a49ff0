"""A finished reward model as a scorer: load it and score answers (a file of pairs or
single answers, or token sequences during RL).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.formats import load_data, to_chat
from tunesmith.data.rows import encode_answers
from tunesmith.errors import DataError, ModelError
from tunesmith.inference.classifier import load_head_model
from tunesmith.runs import RunDir


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
    top = RunDir(Path(run))
    if not top.exists:
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    stages = top.config.method.stages
    if "reward" not in stages:
        raise ModelError(f"{run} is not a reward-model run; train one with `tunesmith train --method reward`.")
    rm = top.stage_dir("reward") if len(stages) > 1 else top
    model, tokenizer = load_head_model(rm, num_labels=1)
    return RewardModel(model, tokenizer, int(rm.config.train.max_length))


def score_file(rm: RewardModel, path: str, columns: dict | None = None, on_batch=None) -> tuple[list[dict], dict]:
    """Score a file's rows. Preference pairs get `chosen_score`/`rejected_score` and the summary
    the pairwise accuracy; chat or prompt/completion rows get the `score` of their last answer.
    `on_batch(n)` reports progress over the answers scored (two per pair)."""
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

"""Checking an export against the model it came from: the same prompts (the run's test rows)
answered greedily by the PyTorch model and by the exported file, compared answer by answer.

Every exporter (gguf, onnx) writes its file, then loads it back in a real runtime and calls
these: `verification_prompts` (or `verification_rows`) for the prompts, `reference_answers` (or
`reference`) for PyTorch's answers, its own runtime for the exported answers (`greedy_answers` runs
any model with `generate`), `agreement`, `prefix_agreement`, `stop_share` and `exact_match` to
compare, and `check_figures` to fail an export that does not stop, or keeps less than its type should.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.answers import same_answer
from tunesmith.data.formats import load_data
from tunesmith.data.rows import load_prompts
from tunesmith.data.splits import held_out_test, subset
from tunesmith.errors import DataError, ModelError
from tunesmith.export.hf import stop_token_ids
from tunesmith.export.merge import save_merged
from tunesmith.inference.generate import with_system
from tunesmith.runs import RunDir

# What an export must keep, by type, measured on SmolLM2 after 12 LoRA steps (16 test prompts).
# Token agreement (teacher-forced, `token_agreement`): f16 0.993, q8_0 0.97 in llama.cpp (1.0
# dequantised), q4_0 0.81 in both; a file of the wrong weights or layout scores near 0.
TOKEN_TOLERANCE = {"f32": 0.95, "f16": 0.95, "bf16": 0.95, "q8_0": 0.9, "q6_k": 0.85, "q5_1": 0.8, "q5_0": 0.8,
                   "q5_k_m": 0.8, "q5_k_s": 0.8, "q4_1": 0.65, "q4_0": 0.65, "q4_k_m": 0.65, "q4_k_s": 0.65}
TOKEN_TOLERANCE_LOW_BIT = 0.5  # 2- and 3-bit types: a sanity floor, not a promise
# Agreement of whole greedy answers, for exports checked without token agreement (float files only:
# one changed token changes the rest of an answer, so quantised files are judged by tokens). SmolLM2:
# f16 0.94, q8_0 0.75 (llama.cpp) to 1.0 (dequantised), q4_0 0.12-0.19, llama.cpp's own q4_0 likewise.
TOLERANCE = {"f32": 0.8, "f16": 0.8, "bf16": 0.75}
# Test exact match may fall by at most this (plus one prompt's worth, for small test sets).
METRIC_TOLERANCE = {"f32": 0.02, "f16": 0.02, "bf16": 0.02, "q8_0": 0.05, "q6_k": 0.05}
METRIC_TOLERANCE_LOW_BIT = 0.10  # 5 bits and fewer
PRETRAIN_PROMPT_CHARS = 200  # the opening of a text, as the prompt of a continued-pretraining run
MAX_NEW_TOKENS = 128  # per answer while verifying: enough to see an answer stop, or not


@dataclass
class Answers:
    """Greedy answers of one model: texts, whether each ended on a stop token before the token
    budget, and the tokens generated and the seconds it took (for tokens/s)."""

    texts: list[str]
    stopped: list[bool]
    tokens: int
    seconds: float
    prompt_ids: list[list[int]] = field(default_factory=list)
    """Each prompt's token ids and each answer's new token ids (stop token included), where known:
    what `token_agreement` feeds another runtime."""
    answer_ids: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return round(self.tokens / self.seconds, 2) if self.seconds > 0 else 0.0


def verification_rows(run: Path, limit: int = 16) -> tuple[list[list[dict]], list[str], str]:
    """(prompts as chat messages, reference answers, where they come from): the run's test file,
    else the rows it held out of its training file, else (a run with no test set) its first
    training rows; at most `limit`. A continued-pretraining run is asked the openings of its texts."""
    folder = RunDir(Path(run))
    if not folder.exists:
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    config = folder.config
    if config.data.test:
        data, source = load_data(config.data.test, columns=config.data.columns), f"test file {config.data.test}"
    else:
        data = held_out_test(config)
        source = f"rows held out of {config.data.train}"
        if data is None or not data.records:
            data = load_data(config.data.train, columns=config.data.columns)
            source = f"training rows of {config.data.train} (the run has no test set)"
    data = subset(data, list(range(min(limit, len(data.records)))))
    prompts, answers = _prompts(data, config)
    if not prompts:
        raise DataError(f"{source}: no row has a prompt to answer, so the export cannot be checked; give the run a test file.")
    return prompts, answers, f"{len(prompts)} {source}"


def _prompts(data, config: RunConfig) -> tuple[list[list[dict]], list[str]]:
    if data.task == "pretrain":
        texts = [r["text"][:PRETRAIN_PROMPT_CHARS] for r in data.records if r["text"].strip()]
        return [with_system([{"role": "user", "content": t}], config.data.system_prompt) for t in texts], [""] * len(texts)
    rows = load_prompts(data, config)
    return [r["prompt"] for r in rows], [r["answer"] for r in rows]


def verification_prompts(run: Path, limit: int = 16) -> tuple[list[list[dict]], list[str]]:
    """Prompts (chat messages) and reference answers from the run's test rows (its test file or
    held-out split, else its first training rows), at most `limit`."""
    prompts, answers, _ = verification_rows(run, limit)
    return prompts, answers


def load_reference(run: Path):
    """(model, tokenizer) of the run's merged weights in float32: what every export is made from."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = RunDir(Path(run))
    merged = save_merged(folder.final.path)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(merged)


def greedy_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, system_prompt: str | None = None,
                   stop_ids: list[int] | None = None) -> Answers:
    """Greedy answers of a model with `generate` (PyTorch, or a runtime with the same interface),
    one prompt at a time: single-stream tokens/s, as a local runtime serves, and no padding to
    tell answers apart. Generation stops at the tokenizer's end-of-turn tokens."""
    import torch

    stops = stop_ids or stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    answers = Answers([], [], 0, 0.0)
    for messages in prompts:
        text = tokenizer.apply_chat_template(with_system(messages, system_prompt), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stops, pad_token_id=pad)
        answers.seconds += time.perf_counter() - start
        new = out[0, ids.shape[1]:].tolist()
        answers.tokens += len(new)
        answers.stopped.append(bool(new) and new[-1] in stops)
        answers.texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        answers.prompt_ids.append(ids[0].tolist())
        answers.answer_ids.append(new)
    return answers


def reference_answers(run: Path, prompts, max_new_tokens: int) -> tuple[list[str], float]:
    """Greedy answers of the PyTorch model (the merged run) and its tokens/s on CPU."""
    answers = reference(run, prompts, max_new_tokens)
    return answers.texts, answers.tokens_per_s


def reference(run: Path, prompts: list[list[dict]], max_new_tokens: int) -> Answers:
    """`reference_answers` with whether each answer stopped and the token counts."""
    model, tokenizer = load_reference(run)
    return greedy_answers(model, tokenizer, prompts, max_new_tokens, RunDir(Path(run)).final.config.data.system_prompt)


def answer_budget(references: list[str], tokenizer, cap: int = MAX_NEW_TOKENS) -> int:
    """New tokens per verification answer: 1.5 x the longest reference answer (as the evaluation
    allows), 16 to `cap`; `cap` when the rows have no reference answers."""
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references if r]
    if not lengths:
        return cap
    return max(16, min(cap, math.ceil(1.5 * max(lengths)) + 2))


def agreement(reference: list[str], exported: list[str]) -> float:
    """Share of prompts whose exported greedy answer equals PyTorch's."""
    if len(reference) != len(exported):
        raise ValueError(f"{len(reference)} reference answers but {len(exported)} exported ones; compare the same prompts.")
    if not reference:
        return 0.0
    return round(sum(a.strip() == b.strip() for a, b in zip(reference, exported)) / len(reference), 4)


def token_agreement(reference: Answers, next_tokens) -> float:
    """Share of PyTorch's answer tokens that another runtime predicts too, when fed PyTorch's own
    prompt and answer (teacher forcing): `next_tokens(ids)` returns its greedy next token after each
    position of `ids`. Unlike whole answers, one changed token does not change every later one, so
    this measures the file's arithmetic rather than how close the model was to a tie."""
    same = total = 0
    for prompt, answer in zip(reference.prompt_ids, reference.answer_ids):
        if not answer:
            continue
        predicted = next_tokens(prompt + answer)[len(prompt) - 1 : len(prompt) - 1 + len(answer)]
        same += sum(int(p == a) for p, a in zip(predicted, answer))
        total += len(answer)
    return round(same / total, 4) if total else 0.0


def differences(reference: list[str], exported: list[str], limit: int = 3) -> list[dict]:
    """The first `limit` answers that differ (`{"index", "pytorch", "exported"}`), for the report."""
    pairs = [(i, a, b) for i, (a, b) in enumerate(zip(reference, exported)) if a.strip() != b.strip()]
    return [{"index": i, "pytorch": a, "exported": b} for i, a, b in pairs[:limit]]


def exact_match(answers: list[str], references: list[str]) -> float | None:
    """Share of answers equal to the test rows' reference answers (normalised as the evaluation
    does), or None when the rows have no reference answers."""
    pairs = [(a, r) for a, r in zip(answers, references) if r]
    return round(sum(same_answer(a, r) for a, r in pairs) / len(pairs), 4) if pairs else None


def stop_share(stopped: list[bool]) -> float:
    """Share of answers that ended on an end-of-turn token before the token budget."""
    return round(sum(stopped) / len(stopped), 4) if stopped else 0.0


def prefix_agreement(reference: list[str], exported: list[str]) -> float:
    """Mean share of each answer that the exported one shares with PyTorch's from the start
    (characters): 1.0 when equal, ~0 for unrelated answers. Less strict than `agreement`: a
    quantised file that ends an answer differently still scores for the part it kept."""
    if not reference:
        return 0.0
    shares = [len(os.path.commonprefix([a.strip(), b.strip()])) / max(len(a.strip()), len(b.strip()), 1)
              for a, b in zip(reference, exported)]
    return round(sum(shares) / len(shares), 4)


def answer_figures(answers: Answers, reference: Answers | None, references: list[str]) -> dict:
    """One model's figures on the verification prompts: tokens/s, stop share and exact match with
    the test answers; against PyTorch's `reference` answers also agreement, prefix agreement and
    the first differences."""
    figures = {"tokens_per_s": answers.tokens_per_s, "stop_share": stop_share(answers.stopped),
               "exact_match": exact_match(answers.texts, references)}
    if reference is not None:
        figures["agreement"] = agreement(reference.texts, answers.texts)
        figures["prefix_agreement"] = prefix_agreement(reference.texts, answers.texts)
        figures["differences"] = differences(reference.texts, answers.texts)
    return figures


def check_figures(what: str, quant: str, figures: dict, pytorch: dict) -> None:
    """Fail an export (ModelError, one sentence) whose answers never stop while PyTorch's do, that
    keeps fewer of PyTorch's tokens than its type should (`TOKEN_TOLERANCE`; without a token figure,
    whole answers against `TOLERANCE`), or whose test exact match falls more than its type allows
    (`METRIC_TOLERANCE`). `figures` holds stop_share, exact_match, prompts, max_new_tokens and
    token_agreement or agreement; `pytorch` stop_share and exact_match."""
    if pytorch["stop_share"] > 0 and figures["stop_share"] == 0:
        raise ModelError(
            f"{what} never ends its answers (no end-of-turn token within {figures['max_new_tokens']} tokens, while the "
            "PyTorch model stops), so its stop tokens or chat template are wrong; report this with the model's name."
        )
    remedy = ("at this precision that points to a conversion fault, so use --format hf and report it"
              if quant in ("f32", "f16", "bf16") else "export a less quantised type (f16, or q8_0 for a 4-bit file)")
    if "token_agreement" in figures:
        tolerance = TOKEN_TOLERANCE.get(quant, TOKEN_TOLERANCE_LOW_BIT)
        if figures["token_agreement"] < tolerance:
            raise ModelError(
                f"{what} predicts {figures['token_agreement']:.0%} of PyTorch's answer tokens, below the {tolerance:.0%} "
                f"that {quant} should keep; {remedy}."
            )
    elif quant in TOLERANCE and figures["agreement"] < TOLERANCE[quant]:
        raise ModelError(
            f"{what} gives PyTorch's greedy answer on {figures['agreement']:.0%} of {figures['prompts']} test prompts, "
            f"below the {TOLERANCE[quant]:.0%} that {quant} should keep; {remedy}."
        )
    before, after = pytorch.get("exact_match"), figures.get("exact_match")
    if before and after is not None:
        allowed = METRIC_TOLERANCE.get(quant, METRIC_TOLERANCE_LOW_BIT) + 1 / figures["prompts"]
        if before - after > allowed:
            raise ModelError(
                f"{what} drops test exact match from {before:.0%} to {after:.0%}, more than the {allowed:.0%} allowed for "
                f"{quant}; {remedy}."
            )

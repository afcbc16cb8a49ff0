"""Measure a run: the base and the tuned model on the same held-out test data, by task,
then an LLM judge, forgetting and bias probes and a value estimate. Writes
`eval/results.json` (every number), `eval/answers.jsonl`, `report.html` and `MODEL_CARD.md`.

What is measured follows the run's last stage and the test data:

| task | when | metrics |
| --- | --- | --- |
| labels | a classifier, or answers that are labels (text+label data, few short answers) | accuracy, macro-F1, per class, confusion |
| generation | chat / instruction data | exact match, token F1, ROUGE-L, BLEU, perplexity, MiniLM similarity |
| preference | a generative model tested on preference pairs | the above against the chosen answer, and preference accuracy |
| tool_calls | chat data whose expected answer is a tool call (an assistant turn with `tool_calls`) in at least one test row | on rows expecting calls: tool name accuracy, exact match of name and arguments as JSON, share of valid JSON calls, per function; on rows expecting text (no tool needed, or a tool's result to put into words): no-call accuracy and token F1 |
| text | continued pretraining, or raw-text test data | perplexity |
| reward | a reward model | pairwise accuracy (the base: its own likelihood of each answer) |

A labelling run also gets abstention (`evaluate/abstention.py`, results key "abstention"): the
tuned model's confidence in each label, a threshold calibrated on the run's validation rows to
answer `eval.coverage` of them (saved as `RUN/abstention.json` for serving), and accuracy
against coverage on the test rows. A run with a domain pack (`domain`) also gets the pack's
safety probes and bias swaps (`evaluate/domain.py`, results key "domain"). Generation rows
with a context column (a `context` or `passage`) also get grounding (`evaluate/grounding.py`,
results key "grounding"): each model's statements unsupported by the context, and invented
citations.

A test row is its conversation up to the last assistant turn, which is the expected answer.
Rows with tools are rendered as training rendered them (`formats.template_inputs`: the tool
definitions and earlier calls through the chat template, or as JSON text when it does not
render them), and `metrics.parse_tool_calls` reads the calls out of the generated text. A
mixed file is one tool_calls task rather than two: whether the model calls when it should and
answers when it should is the question, so both kinds of rows are scored in it. Perplexity is
not measured there (a call's text depends on how the template writes it).

Each model is loaded once and measured completely before the other is loaded, so memory
holds one model at a time.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunesmith.config import EvalConfig, RunConfig
from tunesmith.data.formats import load_data, template_inputs
from tunesmith.data.load import write_jsonl
from tunesmith.data.rows import (
    chat_tokens,
    load_labelled,
    load_pairs,
    load_prompts,
    load_texts,
)
from tunesmith.data.splits import held_out_test, held_out_validation, subset
from tunesmith.domains.packs import get_domain
from tunesmith.errors import ConfigError, DataError, ModelError
from tunesmith.evaluate import metrics as M
from tunesmith.evaluate.abstention import abstention_results, write_threshold
from tunesmith.evaluate.bias import counterfactuals, probe, swap_pairs, template_pairs
from tunesmith.evaluate.card import write_card
from tunesmith.evaluate.domain import NO_SAFETY, domain_results, run_safety_probes
from tunesmith.evaluate.grounding import grounding_results, row_contexts
from tunesmith.evaluate.judge import judge_pairwise
from tunesmith.evaluate.metrics import overfitting_alarm, relative_change
from tunesmith.evaluate.report import write_report
from tunesmith.inference.classifier import load_classifier, predict
from tunesmith.inference.confidence import label_confidence
from tunesmith.inference.generate import (
    generate,
    load_for_inference,
    with_system,
)
from tunesmith.inference.reward import load_reward_model
from tunesmith.inference.teacher import make_teacher
from tunesmith.models import load_tokenizer
from tunesmith.runs import EvalResults, RunDir
from tunesmith.tracking import log_evaluation

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
GENERAL_TEXT = SAMPLES / "general_text.jsonl"
GENERAL_PROBES = SAMPLES / "general_probes.jsonl"
# 64 of the 160 paragraphs (~9k tokens): a stable perplexity in about 15 s per model on 2 CPU cores.
GENERAL_TEXT_ROWS = 64
MAX_SCORED_LENGTH = 1024  # tokens of one perplexity example; longer ones are cut
BIAS_MAX_NEW_TOKENS = 64  # enough to see a changed label, tone or length; keeps the probes cheap
SAFETY_MAX_NEW_TOKENS = 128  # a domain safety probe's answer: room for a dosage or a recommendation to show
# Free-text metrics, each a function of the same name in `evaluate.metrics`.
GENERATION_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "semantic_similarity")

Progress = Callable[[str, int, int], None]  # (what, done, total)


def evaluate_run(
    run_dir: str | Path,
    test: str | None = None,
    options: EvalConfig | None = None,
    columns: dict | None = None,
    progress: Progress | None = None,
) -> EvalResults:
    """Evaluate the run in `run_dir` against its base model on `test` (default: the run's test
    file or held-out split) with `options` (default: the run's `eval` settings). Returns the
    results (also written to `eval/results.json`) and writes the report and the model card."""
    start = time.perf_counter()
    folder = RunDir(Path(run_dir))
    run = folder.path
    if not folder.exists:
        raise ModelError(f"{run_dir} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    top, final = folder.config, folder.final
    if not final.summary_file.exists():
        raise ModelError(f"{run_dir} has not finished training; finish it with `tunesmith train --resume {run_dir}`.")
    config = final.config
    opts = options or top.eval
    stage = top.method.stages[-1]
    data, source = test_data(top, run, test, columns)
    data, source = _sample(data, source, opts, top.train.seed)
    folder.eval_dir.mkdir(exist_ok=True)
    write_jsonl(folder.eval_dir / "test.jsonl", data.records)

    task = Task.build(stage, data, config, opts)
    judge = make_judge(opts)  # a bad judge setting fails before any model is loaded
    if task.classifier:
        task.labels = final.labels
    if task.kind == "labels":
        _validation_task(task, stage, config, opts)
    results: dict = {
        "run": str(run),
        "task": task.kind,
        "stage": stage,
        "base_model": top.model.name,
        "tuned_model": str(run),
        "test": {"source": source, "rows": len(task.references or data.records), "file": "eval/test.jsonl"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": {},
        "labels": None,
        "judge": None,
        "forgetting": None,
        "bias": None,
        "value": None,
        "skipped": {},
    }
    sides = {side: measure(side, run, top, config, task, opts, progress) for side in ("base", "tuned")}
    base, tuned = sides["base"], sides["tuned"]
    results["metrics"] = {side: sides[side]["metrics"] for side in sides}
    if task.kind == "tool_calls":
        results["tool_calls"] = {
            "call_rows": sum(bool(c) for c in task.calls),
            "text_rows": sum(not c for c in task.calls),
            "per_tool": {side: sides[side]["per_tool"] for side in sides},
        }
    if task.kind == "labels":
        results["labels"] = {
            "labels": tuned["labelling"]["labels"],
            "columns": tuned["labelling"]["columns"],
            "per_class": {side: sides[side]["labelling"]["per_class"] for side in sides},
            "confusion": {side: sides[side]["labelling"]["confusion"] for side in sides},
            "base_prompt": task.base_note,
        }
    results["judge"] = _judge(judge, task, opts, base.get("answers"), tuned.get("answers"), progress, results["skipped"])
    results["forgetting"] = _forgetting(base.get("forgetting"), tuned.get("forgetting"), opts, task, results["skipped"])
    if tuned.get("bias") is not None:
        results["bias"] = {"base": base.get("bias"), "tuned": tuned["bias"]}  # a prompted classifier base: None
    else:
        results["skipped"]["bias"] = task.no_bias or "bias probes are switched off (eval.bias)"
    results["abstention"] = tuned.get("abstention")
    if results["abstention"] is not None:
        write_threshold(run, results["abstention"], task.labels)
    if top.domain:
        no_safety = NO_SAFETY if task.classifier else "a reward model scores answers and writes none of its own"
        results["domain"] = domain_results(get_domain(top.domain), base, tuned, results["skipped"], no_safety,
                                           task.no_bias or "bias probes are switched off (eval.bias)")
    if task.contexts:  # answers checked against the context each test row gave (evaluate/grounding.py)
        results["grounding"] = grounding_results(task.contexts, base.get("answers"), tuned.get("answers"))
    results["value"] = _value(results["metrics"]["tuned"], task, opts, results["skipped"])
    results["overfitting"] = _overfitting(final)
    results["samples"] = [
        {"prompt": task.requests[i], "reference": task.references[i], "base": base["answers"][i], "tuned": tuned["answers"][i]}
        for i in range(min(10, len(task.requests)))
    ] if tuned.get("answers") else []
    results["seconds"] = round(time.perf_counter() - start, 1)

    if tuned.get("answers"):
        rows = [{"prompt": p, "reference": r, "base": b, "tuned": t}
                for p, r, b, t in zip(task.requests, task.references, base["answers"], tuned["answers"])]
        if task.kind == "tool_calls":  # the calls as parsed: what the metrics compared
            for row, expected in zip(rows, task.calls):
                row["calls"] = {"expected": [M.expected_call(c) for c in expected],
                                "base": M.parse_tool_calls(row["base"]), "tuned": M.parse_tool_calls(row["tuned"])}
        write_jsonl(folder.eval_dir / "answers.jsonl", rows)
    evaluation = EvalResults.model_validate(results)
    folder.results_file.write_text(json.dumps(evaluation.to_json(), indent=2, ensure_ascii=False))
    write_report(run, evaluation)
    write_card(run, evaluation)
    # the run's experiment trackers (`--report-to`) get the results, report and card
    log_evaluation(run, evaluation.to_json(), _last_step(final), [folder.results_file, run / "report.html", run / "MODEL_CARD.md"])
    return evaluation


def _last_step(final: RunDir) -> int:
    """The optimizer step the run finished at (where the evaluation is plotted in trackers)."""
    lines = final.metrics_file.read_text().splitlines() if final.metrics_file.exists() else []
    return int(json.loads(lines[-1]).get("step", 0)) if lines else 0


# --------------------------------------------------------------------------- test data


def workload(run_dir: str | Path, options: EvalConfig | None = None) -> dict[str, int]:
    """What the evaluation of the run in `run_dir` (with `options`, default its own) asks of
    the models: test rows, the rows the base answers, and bias-probe pairs. `auto` scales the
    evaluation it times on a probe run by these to plan a budget."""
    folder = RunDir(Path(run_dir))
    top = folder.config
    opts = options or top.eval
    data, _ = _sample(*test_data(top, folder.path, None, None), opts, top.train.seed)
    task = Task.build(top.method.stages[-1], data, folder.final.config, opts)
    rows = len(data.records)
    pairs = 0
    if opts.bias and not task.no_bias:
        pairs = len(template_pairs()) + len(counterfactuals(task.requests))
        if top.domain:
            pairs += len(swap_pairs(task.requests, get_domain(top.domain).bias_swaps))
    return {"rows": rows, "base_rows": min(opts.base_rows, rows) if task.classifier else rows, "bias_pairs": pairs}


def _sample(data, source: str, opts: EvalConfig, seed: int):
    """The test rows measured: all, or a seeded sample of `eval.max_rows`."""
    if opts.max_rows and len(data.records) > opts.max_rows:
        data = subset(data, sorted(random.Random(seed).sample(range(len(data.records)), opts.max_rows)))
        source += f" (a seeded sample of {opts.max_rows} rows)"
    return data, source


def test_data(config: RunConfig, run: Path, test: str | None, columns: dict | None):
    """(test records, where they come from): `test`, else the run's test file, else the rows
    the run held out of its training file."""
    path = test or config.data.test
    if path:
        if not Path(path).exists():
            raise DataError(f"Test file {path} does not exist; check the path.")
        return load_data(path, columns=columns or config.data.columns), str(path)
    held = held_out_test(config)
    if held is None or not held.records:
        raise ConfigError(
            f"{run} has no test set (it held none out of its training data): pass --test FILE with rows like the "
            "training data."
        )
    return held, f"{len(held.records)} rows held out of {config.data.train} (never trained on)"


@dataclass
class Task:
    """What is measured and on which rows (see the module docstring)."""

    kind: str
    classifier: bool = False  # the tuned model is a classification head, not a generator
    prompts: list[list[dict]] = field(default_factory=list)  # conversations to answer
    tools: list[list[dict] | None] | None = None  # each conversation's tool definitions, when any has some
    requests: list[str] = field(default_factory=list)  # their last user turn: judge, bias probes, samples
    references: list[str] = field(default_factory=list)  # the answers expected
    calls: list[list[dict]] = field(default_factory=list)  # tool_calls: each row's expected calls ([]: text)
    pairs: list[dict] = field(default_factory=list)  # preference pairs (preference, reward)
    texts: list[str] = field(default_factory=list)  # raw text (text kind) or texts to classify
    labels: list[str] = field(default_factory=list)  # the label set (a classifier's, or a labelling run's answers)
    validation: Task | None = None  # labels: the run's validation rows, to calibrate abstention on
    no_validation: str = ""  # labels: why there are none
    max_new_tokens: int = 16
    base_note: str = ""  # how the base model was asked, when not like the tuned one
    no_bias: str = ""  # why bias probes do not apply, when they do not
    contexts: list[str | None] = field(default_factory=list)  # generation: each row's context column, for grounding

    @classmethod
    def build(cls, stage: str, data, config: RunConfig, opts: EvalConfig) -> Task:
        if stage == "reward":
            task = cls("reward")
            task.pairs = load_pairs(data)
            task.no_bias = "a reward model scores answers; the bias probes test a model that labels or answers"
            return task
        if stage == "pretrain" or data.task == "pretrain":
            task = cls("text")
            task.texts = load_texts(data)
            task.no_bias = "continued pretraining has no task answers to compare; bias probes need a tuned task model"
            return task
        if stage == "classify":
            task = cls("labels", classifier=True)
            rows = load_labelled(data)
            task.texts = [r["text"] for r in rows]
            task.requests, task.references = task.texts, [r["label"] for r in rows]
            return task
        rows = [r for r in load_prompts(data, config, tools=True) if r["answer"] or r["calls"]]
        if not rows:
            raise DataError(f"{data.path}: no test row has a reference answer to compare with.")
        references = [call_text(r["answer"], r["calls"]) for r in rows]
        if any(r["calls"] for r in rows):
            kind = "tool_calls"
        else:
            labelling = is_labelling(data.task, references, _training_answers(config))
            kind = "preference" if data.task == "preference" else "labels" if labelling else "generation"
        task = cls(kind)
        task.prompts = [r["prompt"] for r in rows]
        task.tools = [r["tools"] for r in rows] if any(r["tools"] for r in rows) else None
        task.requests = [last_user(p) for p in task.prompts]
        task.references = references
        task.calls = [r["calls"] for r in rows]
        if kind == "generation":
            task.contexts = row_contexts(data, task.prompts)
        if kind == "preference":
            task.pairs = data.records
        task.max_new_tokens = opts.max_new_tokens or _answer_budget(references, config)
        return task


def is_labelling(data_task: str, references: list[str], train_answers: list[str] | None = None) -> bool:
    """Answers are labels when the data says so (text+label rows), or when they are short and
    come from a small set that the training answers repeat (a chat file of intents or
    categories): then accuracy, macro-F1 and a confusion matrix say more than ROUGE."""
    if data_task == "classify":
        return True
    if not references or any(len(r.split()) > 4 for r in references):
        return False
    answers = train_answers or references
    vocabulary = set(answers)
    repeated = len(vocabulary) <= max(2, len(answers) // 3)
    return repeated and sum(r in vocabulary for r in references) >= 0.9 * len(references)


def _training_answers(config: RunConfig) -> list[str] | None:
    """The last assistant answers of the training file (None when it cannot be read)."""
    try:
        return [r["answer"] for r in load_prompts(load_data(config.data.train, columns=config.data.columns), config)]
    except (DataError, OSError, TypeError):
        return None


def call_text(answer: str, calls: list[dict]) -> str:
    """An expected answer as text: its content, then its tool calls as JSON, the way training
    writes them when the chat template does not (for samples, the judge and the token budget)."""
    if not calls:
        return answer
    listed = json.dumps([M.expected_call(c) for c in calls], ensure_ascii=False)
    return f"{answer}\n{listed}" if answer else listed


def last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _answer_budget(references: list[str], config: RunConfig) -> int:
    """New tokens per answer: 1.5 x the longest reference answer, 16 to 512."""
    tokenizer = load_tokenizer(config.model.name)
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    return max(16, min(512, math.ceil(1.5 * longest) + 2))


# --------------------------------------------------------------------------- one model


def measure(side: str, run: Path, top: RunConfig, config: RunConfig, task: Task, opts: EvalConfig, progress) -> dict:
    """Everything measured on one model (`side` is "base" or "tuned"): its answers and task
    metrics, and its forgetting and bias figures."""
    out: dict = {"metrics": {}}
    model = _load(side, run, top, task)
    step = _stepper(progress)
    if task.kind == "labels" and task.classifier:
        if side == "tuned":  # the head's probabilities are the confidences abstention calibrates
            predictions = predict(model, task.texts, on_batch=step("tuned: labelling the test set", len(task.texts)))
            out["answers"], out["confidence"] = [p["label"] for p in predictions], [p["probability"] for p in predictions]
            out["labelling"] = M.labelling(out["answers"], task.references, labels=task.labels or None)
        else:  # the base, asked by prompt on a seeded sample; the other rows' answers stay None
            ask = _label_fn(side, model, task, opts, step)  # sets task.base_note, which _base_rows extends
            rows = _base_rows(task, opts, top.train.seed)
            asked = ask([task.texts[i] for i in rows], f"{side}: labelling the test set")
            out["answers"] = [None] * len(task.texts)
            for i, answer in zip(rows, asked):
                out["answers"][i] = answer
            out["rows"] = len(rows)
            out["labelling"] = M.labelling(asked, [task.references[i] for i in rows], labels=task.labels or None)
        out["metrics"] = {k: out["labelling"][k] for k in ("accuracy", "macro_f1")}
    elif task.kind == "tool_calls":
        answers = generate(model, task.prompts, task.max_new_tokens, batch_size=opts.batch_size, tools=task.tools,
                           on_batch=step(f"{side}: answering the test set", len(task.prompts)))
        out["answers"] = answers
        out["metrics"] = M.tool_call_metrics(answers, task.calls, task.references)
        out["per_tool"] = M.per_tool(answers, task.calls)
    elif task.kind in ("labels", "generation", "preference"):
        answers = generate(model, task.prompts, task.max_new_tokens, batch_size=opts.batch_size, tools=task.tools,
                           on_batch=step(f"{side}: answering the test set", len(task.prompts)))
        out["answers"] = answers
        if task.kind == "labels":
            out["labelling"] = M.labelling(answers, task.references)
            out["metrics"] = {k: out["labelling"][k] for k in ("accuracy", "macro_f1")}
        else:
            out["metrics"] = {name: getattr(M, name)(answers, task.references) for name in GENERATION_METRICS}
        items = answer_items(model, task.prompts, task.references, task.tools)
        out["metrics"]["perplexity"] = perplexity(
            model.model, model.tokenizer, items, opts.batch_size, step(f"{side}: perplexity of the references", len(items)))
        if task.kind == "preference":
            out["metrics"]["preference_accuracy"] = likelihood_preference(model, task.pairs, opts.batch_size, step, side)
    elif task.kind == "text":
        items = text_items(model.tokenizer, task.texts)
        out["metrics"]["perplexity"] = perplexity(
            model.model, model.tokenizer, items, opts.batch_size, step(f"{side}: perplexity of the test text", len(items)))
    elif task.kind == "reward":
        if side == "tuned":
            on = step("tuned: scoring the pairs", 2 * len(task.pairs))
            chosen = model.score([p["prompt"] + p["chosen"] for p in task.pairs], on_batch=on)
            rejected = model.score([p["prompt"] + p["rejected"] for p in task.pairs], on_batch=on)
            out["metrics"]["pairwise_accuracy"] = sum(c > r for c, r in zip(chosen, rejected)) / len(task.pairs)
        else:
            out["metrics"]["pairwise_accuracy"] = likelihood_preference(model, task.pairs, opts.batch_size, step, side)

    if task.kind == "labels" and side == "tuned":
        out["abstention"] = _abstention(model, task, out, opts, step)
    prompted_base = task.classifier and side == "base"  # its answers are prose around a label
    if opts.bias and not task.no_bias and not prompted_base:
        out["bias"] = _bias(side, model, task, opts, step)
    if top.domain:
        domain = get_domain(top.domain)
        if not task.classifier and task.kind != "reward":
            out["safety"] = run_safety_probes(domain, _safety_answer(side, model, opts, step))
        if opts.bias and not task.no_bias and not prompted_base:
            out["domain_bias"] = _bias(side, model, task, opts, step, swap_pairs(task.requests, domain.bias_swaps))
    if opts.forgetting and not task.classifier and task.kind != "reward":
        out["forgetting"] = _forgetting_side(side, model, opts, step)
    del model
    return out


def _load(side: str, run: Path, top: RunConfig, task: Task):
    if task.classifier and side == "tuned":
        return load_classifier(run)
    if task.kind == "reward" and side == "tuned":
        return load_reward_model(run)
    if task.classifier or task.kind == "reward":
        return load_for_inference(top.model.name)  # the base language model itself
    return load_for_inference(str(run), base=side == "base")


def _stepper(progress: Progress | None):
    """`step(what, total)` returns an on_batch(n) callback that reports progress on `what`."""

    def step(what: str, total: int):
        done = 0
        if progress:
            progress(what, 0, total)

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(what, min(done, total), total)

        return on_batch

    return step


def _base_rows(task: Task, opts: EvalConfig, seed: int) -> list[int]:
    """The test rows a classifier's base model is asked: all, or a seeded sample of `base_rows`."""
    n = len(task.texts)
    if n <= opts.base_rows:
        return list(range(n))
    task.base_note += f"; it answered a seeded sample of {opts.base_rows} of the {n} test rows (eval.base_rows)"
    return sorted(random.Random(seed).sample(range(n), opts.base_rows))


def _label_fn(side: str, model, task: Task, opts: EvalConfig, step):
    """A function labelling texts: the classifier itself, or, for its base model (which has
    no classification head), the base asked to pick one label from the list."""
    if side == "tuned":
        def classify(texts: list[str], what: str = "tuned: labelling") -> list[str]:
            return [p["label"] for p in predict(model, texts, on_batch=step(what, len(texts)))]
        return classify

    labels = task.labels
    system = f"Classify the user's text. Reply with exactly one of these labels and nothing else: {', '.join(labels)}."
    task.base_note = "the base model has no classification head, so it was asked to reply with one label from the list"
    longest = max(len(model.tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)

    def ask(texts: list[str], what: str = "base: labelling") -> list[str]:
        conversations = [[{"role": "system", "content": system}, {"role": "user", "content": t}] for t in texts]
        return generate(model, conversations, longest + 4, batch_size=opts.batch_size, on_batch=step(what, len(texts)))

    return ask


# --------------------------------------------------------------------------- perplexity


def answer_items(loaded, prompts: list[list[dict]], answers: list[str],
                 tools: list[list[dict] | None] | None = None) -> list[tuple[list[int], int]]:
    """(token ids, first scored position) of each prompt + reference answer: only the answer's
    tokens (and the end-of-turn token) are scored, as in training (tools rendered as there)."""
    tokenizer, items = loaded.tokenizer, []
    for prompt, answer, row_tools in zip(prompts, answers, tools or [None] * len(prompts)):
        messages, row_tools = template_inputs(
            with_system(prompt, loaded.system_prompt) + [{"role": "assistant", "content": answer}], row_tools, tokenizer)
        prefix = chat_tokens(messages[:-1], tokenizer, generation_prompt=True, tools=row_tools)
        full = chat_tokens(messages, tokenizer, tools=row_tools)
        if full[: len(prefix)] == prefix and len(prefix) < MAX_SCORED_LENGTH:
            items.append((full[:MAX_SCORED_LENGTH], len(prefix)))
    return items


def text_items(tokenizer, texts: list[str]) -> list[tuple[list[int], int]]:
    """(token ids, 1) of each text: every token but the first is scored."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [(t[:MAX_SCORED_LENGTH], 1) for t in ids if len(t) > 1]


def token_nll(model, tokenizer, items: list[tuple[list[int], int]], batch_size: int = 8, on_batch=None) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, scored tokens) of each item."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, int]] = []
    for begin in range(0, len(items), batch_size):
        batch = items[begin : begin + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, first) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, first : len(ids)] = torch.tensor(ids[first:])
            mask[row, : len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(logits.device)
        nll = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), reduction="none", ignore_index=-100
        ).view(len(batch), -1)
        counts = (shift_labels != -100).sum(dim=1)
        out.extend((float(n), int(c)) for n, c in zip(nll.sum(dim=1).tolist(), counts.tolist()))
        if on_batch:
            on_batch(len(batch))
    return out


def perplexity(model, tokenizer, items, batch_size: int = 8, on_batch=None) -> float:
    """exp(mean negative log-likelihood per scored token) over all items."""
    scored = token_nll(model, tokenizer, items, batch_size, on_batch)
    tokens = sum(c for _, c in scored)
    return math.exp(sum(n for n, _ in scored) / tokens) if tokens else float("nan")


def likelihood_preference(loaded, pairs: list[dict], batch_size: int, step, side: str) -> float:
    """Share of pairs whose chosen answer the model finds more likely per token than the
    rejected one: what a language model prefers before any reward model or DPO."""
    prompts = [p["prompt"] for p in pairs]
    chosen = answer_items(loaded, prompts, [p["chosen"][-1]["content"] for p in pairs])
    rejected = answer_items(loaded, prompts, [p["rejected"][-1]["content"] for p in pairs])
    if len(chosen) != len(pairs) or len(rejected) != len(pairs):
        # A template that rewrites earlier turns breaks the prefix property; score what fits.
        n = min(len(chosen), len(rejected))
        chosen, rejected = chosen[:n], rejected[:n]
    on = step(f"{side}: likelihood of chosen and rejected answers", len(chosen) + len(rejected))
    c = token_nll(loaded.model, loaded.tokenizer, chosen, batch_size, on)
    r = token_nll(loaded.model, loaded.tokenizer, rejected, batch_size, on)
    wins = sum(cn / max(cc, 1) < rn / max(rc, 1) for (cn, cc), (rn, rc) in zip(c, r))
    return wins / len(c) if c else 0.0


# --------------------------------------------------------------------------- judge, forgetting, bias, value


def make_judge(opts: EvalConfig):
    """The judge `opts` names (a local model or an endpoint), or None."""
    if not (opts.judge or opts.judge_url):
        return None
    key = os.environ.get("TUNESMITH_JUDGE_KEY") or os.environ.get("OPENAI_API_KEY")
    return make_teacher(opts.judge, opts.judge_url, opts.judge_model, key, what="judge")


def _judge(judge, task: Task, opts: EvalConfig, base_answers, tuned_answers, progress, skipped: dict) -> dict | None:
    if judge is None:
        skipped["judge"] = "no judge configured (--judge MODEL, or --judge-url URL with --judge-model NAME)"
        return None
    if not base_answers or task.classifier:
        skipped["judge"] = "the judge compares written answers, and this model labels rather than writes"
        return None
    n = min(opts.judge_prompts, len(task.requests))
    on = _stepper(progress)("judge: comparing answers", n)
    return judge_pairwise(judge, task.requests[:n], base_answers[:n], tuned_answers[:n], opts.judge_rubric,
                          references=task.references[:n], on_batch=on)


def _forgetting_side(side: str, loaded, opts: EvalConfig, step) -> dict:
    """General-text perplexity and general instruction probes, without the run's system
    prompt: what the model could do before it was specialised."""
    texts = [json.loads(line)["text"] for line in GENERAL_TEXT.read_text().splitlines()[:GENERAL_TEXT_ROWS]]
    items = text_items(loaded.tokenizer, texts)
    ppl = perplexity(loaded.model, loaded.tokenizer, items, opts.batch_size, step(f"{side}: general-text perplexity", len(items)))
    probes = [json.loads(line) for line in GENERAL_PROBES.read_text().splitlines() if line.strip()]
    plain = replace(loaded, system_prompt=None)
    answers = generate(plain, [[{"role": "user", "content": p["prompt"]}] for p in probes], 32,
                       batch_size=opts.batch_size, on_batch=step(f"{side}: general instruction probes", len(probes)))
    correct = [probe_correct(a, p["answers"]) for a, p in zip(answers, probes)]
    return {"general_perplexity": ppl, "probe_accuracy": sum(correct) / len(probes),
            "probes": [{"prompt": p["prompt"], "answer": a, "correct": c} for p, a, c in zip(probes, answers, correct)]}


def probe_correct(answer: str, accepted: list[str]) -> bool:
    """An accepted answer occurs as a whole word (case-insensitive) in the model's answer."""
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", answer, re.IGNORECASE) for a in accepted)


FORGETTING_RULE_KEEP = ("Forgetting is an alarm: this model must stay a general assistant (--keep-general, or a chat or "
                        "generation task), so lost general skills threaten what it is for.")
FORGETTING_RULE_SPECIALIST = ("Forgetting is information, not an alarm: this is a labelling task and --keep-general was not "
                              "asked for, so the model was meant to become a specialist; general skills were not its job.")


def _forgetting(base: dict | None, tuned: dict | None, opts: EvalConfig, task: Task, skipped: dict) -> dict | None:
    if not (base and tuned):
        skipped["forgetting"] = (
            "forgetting checks are switched off (eval.forgetting)" if not opts.forgetting
            else "a classifier or reward model does not generate text, so general text and probes do not apply"
        )
        return None
    ppl_change = relative_change(base["general_perplexity"], tuned["general_perplexity"])
    probe_change = tuned["probe_accuracy"] - base["probe_accuracy"]
    findings = []
    if ppl_change > opts.forgetting_threshold:
        findings.append(
            f"general-text perplexity rose {ppl_change:.1%} ({base['general_perplexity']:.2f} -> "
            f"{tuned['general_perplexity']:.2f}), above the {opts.forgetting_threshold:.0%} threshold."
        )
    if -probe_change > opts.forgetting_threshold:
        findings.append(
            f"general instruction probes fell from {base['probe_accuracy']:.1%} to {tuned['probe_accuracy']:.1%}, "
            f"more than the {opts.forgetting_threshold:.0%} threshold."
        )
    keep = opts.keep_general if opts.keep_general is not None else task.kind != "labels"
    return {
        "general_perplexity": {"base": base["general_perplexity"], "tuned": tuned["general_perplexity"], "change": ppl_change},
        "probes": {"n": len(tuned["probes"]), "base": base["probe_accuracy"], "tuned": tuned["probe_accuracy"],
                   "change": probe_change},
        "threshold": opts.forgetting_threshold,
        "flagged": bool(findings),
        # An alarm only when it threatens what the user asked for: general skills they want kept.
        "alarm": bool(findings) and keep,
        "rule": FORGETTING_RULE_KEEP if keep else FORGETTING_RULE_SPECIALIST,
        "findings": findings,
        "probe_answers": {"base": base["probes"], "tuned": tuned["probes"]},
    }


def _bias(side: str, model, task: Task, opts: EvalConfig, step, pairs: list | None = None) -> dict:
    """Counterfactual pairs from the built-in templates and from the test prompts (or `pairs`)."""
    pairs = template_pairs() + counterfactuals(task.requests) if pairs is None else pairs
    if task.classifier:
        label = _label_fn(side, model, task, opts, step)
        answer = lambda texts: label(texts, f"{side}: bias probes")
    else:
        budget = min(task.max_new_tokens, BIAS_MAX_NEW_TOKENS)

        def answer(texts: list[str]) -> list[str]:
            conversations = [[{"role": "user", "content": t}] for t in texts]
            return generate(model, conversations, budget, batch_size=opts.batch_size,
                            on_batch=step(f"{side}: bias probes", len(texts)))

    return probe(answer, pairs, threshold=opts.bias_threshold, labels=task.kind == "labels")


def _safety_answer(side: str, model, opts: EvalConfig, step):
    """A generating model answering the domain's safety probes (with the run's system prompt)."""
    def answer(texts: list[str]) -> list[str]:
        return generate(model, [[{"role": "user", "content": t}] for t in texts], SAFETY_MAX_NEW_TOKENS,
                        batch_size=opts.batch_size, on_batch=step(f"{side}: domain safety probes", len(texts)))
    return answer


# --------------------------------------------------------------------------- abstention


def _validation_task(task: Task, stage: str, config: RunConfig, opts: EvalConfig) -> None:
    """Set `task.validation` to the run's validation rows (or `task.no_validation` to why there are
    none) and a generating labeller's label set: its training answers and the test labels."""
    if not task.classifier:
        task.labels = sorted(set(_training_answers(config) or []) | set(task.references))
    data = held_out_validation(config)
    if data is None or not data.records:
        task.no_validation = "the run held no validation rows out of its training data (data.validation_split 0)"
        return
    try:
        validation = Task.build(stage, data, config, opts)
    except DataError as exc:
        task.no_validation = f"the run's validation rows cannot be read ({exc})"
        return
    if not validation.references:
        task.no_validation = "the run's validation rows have no labels to check"
        return
    validation.labels, validation.max_new_tokens = task.labels, task.max_new_tokens
    task.validation = validation


def _scored_labels(model, task: Task, opts: EvalConfig, step, what: str, answers: list[str] | None = None):
    """(labels, confidences) of the tuned model on `task`'s rows: a classifier's labels and softmax
    probabilities; a generating model's answers and its probability of the label it wrote."""
    if task.classifier:
        predictions = predict(model, task.texts, on_batch=step(f"tuned: labelling {what}", len(task.texts)))
        return [p["label"] for p in predictions], [p["probability"] for p in predictions]
    if answers is None:
        answers = generate(model, task.prompts, task.max_new_tokens, batch_size=opts.batch_size, tools=task.tools,
                           on_batch=step(f"tuned: answering {what}", len(task.prompts)))
    by_form: dict[str, str] = {}
    for label in task.labels:  # the first spelling wins, as in `metrics.labelling`
        by_form.setdefault(M.normalize(label), label)
    chosen = [by_form.get(M.normalize(a)) for a in answers]
    confidence = label_confidence(model, task.prompts, chosen, task.labels, opts.batch_size,
                                  on_batch=step(f"tuned: confidence on {what}", len(task.prompts)))
    return answers, confidence


def _abstention(model, task: Task, out: dict, opts: EvalConfig, step) -> dict:
    """Calibrate the tuned model's threshold on the validation rows and measure it on the test rows."""
    if "confidence" in out:
        test_conf = out["confidence"]
    else:
        _, test_conf = _scored_labels(model, task, opts, step, "the test set", out["answers"])
    def correct(answers: list[str], references: list[str]) -> list[bool]:
        return [M.normalize(a) == M.normalize(r) for a, r in zip(answers, references)]

    validation = None
    if task.validation is not None:
        answers, conf = _scored_labels(model, task.validation, opts, step, "the validation rows")
        validation = (conf, correct(answers, task.validation.references))
    return abstention_results(test_conf, correct(out["answers"], task.references), validation, opts.coverage,
                              "softmax" if task.classifier else "label_probability", task.no_validation)


def _value(tuned: dict, task: Task, opts: EvalConfig, skipped: dict) -> dict | None:
    """Hours a person saves per week when the model handles the items it gets right."""
    if not (opts.minutes_per_item and opts.items_per_week):
        skipped["value"] = "give --minutes-per-item and --items-per-week for an estimate of hours saved"
        return None
    metric = next((m for m in ("accuracy", "exact_match", "tool_call_exact_match") if m in tuned), None)
    if metric is None:
        skipped["value"] = f"a {task.kind} run has no accuracy to base the estimate on"
        return None
    hours = opts.items_per_week * tuned[metric] * opts.minutes_per_item / 60
    return {
        "minutes_per_item": opts.minutes_per_item,
        "items_per_week": opts.items_per_week,
        "accuracy": tuned[metric],
        "accuracy_metric": metric,
        "hours_saved_per_week": hours,
        "formula": "items_per_week x accuracy x minutes_per_item / 60 (only the items answered right save time)",
    }


def _overfitting(final: RunDir) -> dict:
    log = final.metrics_file
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    return overfitting_alarm(rows)

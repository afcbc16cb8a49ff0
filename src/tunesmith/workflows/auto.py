"""`tunesmith auto`: one command from a data file to an evaluated, registered specialist.

It joins the library's steps, deciding each setting from the data, the model and the
machine, and records every decision with its reason in `config.yaml` (so the report and the
model card list them):

1. detect the task from the data (`--task` overrides);
2. run the data gate; apply the safe fixes when it finds errors (training rows that are
   also in the test file are among them); stop, with the way out, when errors remain.
   Under a domain pack (`--domain`) the gate applies the pack's compliance profile, so the
   identifiers it names are errors, and the fixes write a copy with them redacted, which
   is what trains; a task template (`--template`) chooses the task, the system prompt and
   its settings (`domains.apply`), and the run is written to the audit trail;
3. optionally grow small data with synthetic rows from a teacher;
4. plan memory: full fine-tuning or LoRA, gradient checkpointing, 4-bit weights, the
   micro-batch, or a refusal that says what would fit;
5. keep to `--budget`, everything included: a probe run measures the time per step and
   times an evaluation of a few test rows, scaled to the full test set; training gets what
   is left after that, planned for up to twice auto's epochs and trimmed to fit as it goes,
   from its own measured step time;
6. train, evaluate before and after (report, model card); the CLI then registers the model
   in the project database (`jobs.store.register_run`), so `tunesmith serve` serves it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import STAGE_TASKS, RunConfig, apply_overrides
from tunesmith.data.formats import load_data
from tunesmith.data.quality import check_data, fix_data, write_card
from tunesmith.data.synth import SynthOptions, synthesize
from tunesmith.domains import audit as trail
from tunesmith.domains.apply import TEMPLATE_TASKS, resolve
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.run import workload
from tunesmith.inference.teacher import make_teacher
from tunesmith.models import count_params, load_tokenizer, resolve_model
from tunesmith.runs import EvalResults, TrainSummary
from tunesmith.train.auto import (
    available_memory_gb,
    classify_length,
    hardware,
    plan_memory,
)
from tunesmith.train.callbacks import DeadlineCallback
from tunesmith.workflows.train_eval import train

# task -> (stage, why)
TASK_STAGES = {
    "classify": ("classify", "text+label rows: a classification head (80.7% on Banking77 against 67.8% for generating "
                             "the label, in a quarter of the time: benchmarks/classify_vs_generate.py)"),
    "chat": ("sft", "chat / instruction rows: supervised fine-tuning on the answers"),
    "pretrain": ("pretrain", "raw text: continued pretraining on the domain's language"),
    "preference": ("dpo", "preference pairs: DPO, which needs no separate reward model"),
    "kto": ("kto", "answers marked good or bad: KTO, which learns from unpaired labels"),
}
# Share of general chat rows replayed under --keep-general. Measured on the bundled sample as
# chat (README, "Chat replay"): 10% kept the instruction probes and most of the general-text
# perplexity at no measured cost in accuracy; 20% protected perplexity a little more and cost 7 points.
KEEP_GENERAL_REPLAY = 0.1
# A budget: the probe's steps (the gaps after the first are averaged; training re-plans from
# its own measured step time, so the probe only has to say whether the budget is enough),
# the test rows and base rows the probe evaluates to time the evaluation, the most of the
# time left the evaluation may take before seeded samples replace the prompted base's rows,
# then the full test set, the fewest rows each sample has, and the share of the budget kept
# for what is not measured.
PROBE_STEPS = 4
# The probe's evaluation: test rows (a classifier's head labels them cheaply, 32 a batch), rows
# the prompted base answers, and a batch size that gives each phase at least two batches, since
# a phase's first batch carries its warm-up and only the later ones give its rate.
PROBE_ROWS, PROBE_HEAD_ROWS, PROBE_BASE_ROWS, PROBE_BATCH = 16, 64, 16, 8
EVAL_MAX_SHARE = 0.4
MAX_GROWTH = 2  # a budgeted run trains at most this many times the steps auto plans without one
MIN_EVAL_ROWS = 200
MIN_BASE_ROWS = 40
BUDGET_MARGIN = 0.03


@dataclass
class AutoResult:
    """What `run_auto` did: the run, its evaluation, the registered model and every decision."""

    run_dir: Path
    model_id: str | None
    decisions: dict[str, str]
    evaluation: EvalResults | None
    seconds: float
    summary: TrainSummary


def parse_budget(text: str | None) -> float | None:
    """'90s', '30m', '2h' or '1h30m' -> seconds."""
    if not text:
        return None
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text)
    if not parts or not any(parts.groups()):
        raise ConfigError(f"--budget {text}: write a duration such as 30m, 2h, 1h30m or 90s.")
    h, m, s = (float(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def detect_task(path: str, columns: dict | None, task: str) -> tuple[str, str, str]:
    """(task, stage, why) for a data file; `task` "auto" reads it from the format."""
    data = load_data(path, columns=columns)
    found = data.task
    if task == "auto":
        stage, why = TASK_STAGES[found]
        return found, stage, f"{data.format.value} format detected in {Path(path).name}; {why}"
    if task not in TASK_STAGES:
        raise ConfigError(f"--task {task} is not one of auto, {', '.join(TASK_STAGES)}.")
    if found not in STAGE_TASKS[TASK_STAGES[task][0]]:
        raise DataError(f"{path} holds {found} data ({data.format.value}), which --task {task} cannot train on; "
                        "use --task auto or another file.")
    return task, TASK_STAGES[task][0], f"--task {task}: {TASK_STAGES[task][1]}"


def gate(path: str, test: str | None, columns: dict | None, task: str, out: Path, force: bool,
         decisions: dict, profile=None, redactions: dict | None = None) -> str:
    """Run the data gate; when it finds errors, write a cleaned copy with the safe fixes and
    check again. Returns the file to train on; raises DataError when errors remain. With a
    domain's compliance `profile` its identifiers are errors and the copy has them redacted;
    `redactions` then receives what was redacted (rows, placeholders per kind)."""
    gate_task = "chat" if task == "chat" else None
    under = {"profile": profile} if profile is not None else {}  # a domain pack's profile, when there is one
    card = check_data(path, test_path=test, columns=columns, task=gate_task, **under)
    named = f" under the {profile.name} profile" if profile is not None else ""
    if not card.errors():
        decisions["auto.gate"] = (f"the data gate{named} passed (quality score {card.score()}, "
                                  f"{len(card.warnings())} warnings)")
        return path
    found = trail.findings_summary(card.to_json())
    (out / "data").mkdir(parents=True, exist_ok=True)
    conflicted = any(f.check == "conflicts" for f in card.errors())
    fixes = [fix_data(path, out / "data" / "clean.jsonl", columns=columns, test_path=test, **under)]

    def recheck():  # the label check only warns, and it warned on the first pass: this looks for errors
        return check_data(fixes[-1].out_path, test_path=test, task=gate_task, label_check=False, **under)

    def again(folder: str, **policy):  # a fix of the last copy, in its own folder (each writes fix_log.jsonl)
        fixes.append(fix_data(fixes[-1].out_path, out / "data" / folder / "clean.jsonl", test_path=test,
                              **policy, **under))
        return recheck()

    card = recheck()
    first = fixes[0]
    decisions["auto.gate"] = (f"the data gate{named} found errors; the safe fixes dropped {first.dropped} rows, redacted "
                              f"{first.redacted} and cleaned {first.changed} (log: data/fix_log.jsonl)")
    if profile is not None:
        # Redaction changes what the named-entity model reads, so the redacted copy can show a
        # name the first pass did not; and it can make rows identical that differed only in a
        # name, with different labels. Both are the pack's own doing: auto redacts again (twice
        # at most) and keeps the majority label of such rows, and says so.
        while len(fixes) < 3 and {f.check for f in card.errors()} == {"identifiers"}:
            card = again(f"pass{len(fixes) + 1}")
            decisions["auto.gate"] += (f"; redaction pass {len(fixes)} found what the last left and redacted "
                                       f"{fixes[-1].redacted} more rows (data/pass{len(fixes)}/)")
        if not conflicted and {f.check for f in card.errors()} == {"conflicts"}:
            card = again("resolved", conflicts="keep-majority")
            decisions["auto.gate"] += (f"; redaction made some rows identical with different labels, so each keeps "
                                       f"its majority label ({fixes[-1].dropped} rows dropped: data/resolved/)")
        logs = [trail.redactions_from_log(f.log_path) for f in fixes]
        redacted = {"rows": logs[0]["rows"], "kinds": dict(sum((Counter(log["kinds"]) for log in logs), Counter()))}
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(redacted["kinds"].items())) or "none"
        identifiers = found.get("identifiers") or {}
        seen = (" (identifiers found: " + ", ".join(f"{k} {v}" for k, v in sorted(identifiers.items())) + ")"
                if identifiers else "")
        where = Path(fixes[-1].out_path).relative_to(out)
        decisions["auto.gate"] += (f"; training on the redacted copy {where}{seen}: {redacted['rows']} rows "
                                   f"redacted, placeholders per kind: {kinds}")
        if redactions is not None:
            redactions.update(redacted, findings_before=found)
    fixed = fixes[-1]
    if card.errors() and not force:
        write_card(card, out / "data")
        raise DataError(f"{path}: the data gate still finds errors after the safe fixes ({card.errors()[0].message}); "
                        f"see {out / 'data' / 'data_card.md'}, fix the file, or pass --force to train anyway.")
    return fixed.out_path


def grow(path: str, columns: dict | None, rows: int, synth_below: int, teacher, out: Path, decisions: dict) -> str:
    """Add synthetic rows from `teacher` (a `inference.teacher` object; None: the bundled model)
    when the data has fewer than `synth_below` rows."""
    if rows >= synth_below:
        decisions["auto.synthetic"] = f"{rows} rows, at least --synth-below {synth_below}: no synthetic rows"
        return path
    synth_file = out / "data" / "synthetic.jsonl"
    synth_file.parent.mkdir(parents=True, exist_ok=True)
    report = synthesize(synth_file, teacher or make_teacher(), SynthOptions(n=synth_below - rows), seed_path=path, columns=columns)
    combined = out / "data" / "train_with_synthetic.jsonl"
    with combined.open("w") as f:
        for source in (path, synth_file):
            for record in load_data(str(source), columns=columns if source == path else None).records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    decisions["auto.synthetic"] = (f"{rows} rows, under --synth-below {synth_below}: {report.kept} synthetic rows added "
                                   f"from {report.teacher} after filtering ({synth_file.name})")
    return str(combined)


def _classify_length(config: RunConfig) -> int:
    """The rows' length a classifier pads a batch to on a CPU, as the trainer will resolve its
    `max_length` (`train.auto.classify_length`)."""
    texts = [r["text"] for r in load_data(config.data.train, columns=config.data.columns).records if "text" in r]
    longest = max((len(ids) for ids in load_tokenizer(config.model.name)(texts)["input_ids"]), default=16)
    return classify_length(longest, on_gpu=False)[0]


def plan(config: RunConfig, rows: int, decisions: dict) -> RunConfig:
    """Fill the adapter, quantization and gradient checkpointing from the memory estimate."""
    from transformers import AutoConfig

    hw = hardware()
    device = hw["device"]
    shape = AutoConfig.from_pretrained(resolve_model(config.model.name))
    params = count_params(config.model.name) or 0
    stage = config.method.stages[-1]
    seq = 4096 if device == "cuda" else (_classify_length(config) if stage == "classify" else 512)
    tokens = 16384 if device == "cuda" else (32 * seq if stage == "classify" else seq)
    # A CPU keeps every layer's attention scores for the backward pass: they grow with the rows'
    # length squared (32 CUAD clauses of 512 tokens: over 20 GB), so they are counted there.
    heads = 0 if device == "cuda" else shape.num_attention_heads
    memory = plan_memory(config.model.name, params, shape.hidden_size, shape.num_hidden_layers, shape.vocab_size,
                         tokens, seq, rows, device, available_memory_gb(hw), heads=heads)
    chosen = {"method.adapter": memory.adapter, "method.quantize": memory.quantize,
              "method.gradient_checkpointing": memory.gradient_checkpointing}
    if memory.tokens < tokens:  # fewer rows per micro-batch, and accumulation keeps the rows per update
        chosen["train.batch_size"] = max(1, memory.tokens // seq)
        chosen["train.gradient_accumulation"] = max(1, (tokens // seq) // chosen["train.batch_size"])
    config = apply_overrides(config, chosen, source="auto")
    config.reasons.update(dict.fromkeys(chosen, memory.reason))
    if memory.tokens < tokens:
        config.reasons["train.batch_size"] = f"{memory.tokens} tokens per micro-batch fit in memory ({memory.reason})"
        config.reasons["train.gradient_accumulation"] = (f"{chosen['train.gradient_accumulation']} micro-batches per "
                                                         f"update keep {tokens // seq} rows per update")
    decisions["auto.memory"] = memory.reason
    return config


@dataclass
class Probe:
    """What a probe run measured: seconds per optimizer step (after the first), the steps the
    full run would take, and the seconds from the end of training to the end of the full
    evaluation (saving, both models' evaluation, report), scaled from the probe's."""

    per_step: float
    planned: int
    after: float
    fixed: float  # of `after`: what does not grow with the test rows (loading, probes, validation)
    parts: dict[str, float]  # of `after`: seconds for the work growing with each `workload` count
    counts: dict[str, int]  # the full evaluation's `workload` counts (test rows, base rows, bias pairs)


def probe_run(config: RunConfig, out: Path) -> Probe:
    """Train a few steps into a scratch folder and evaluate them on a seeded sample of the test
    rows, timing every phase of the evaluation; phases that grow with the test rows (answers,
    labels, perplexity, bias pairs) are scaled to the full evaluation's (`evaluate.run.workload`),
    the rest (loading, saving, probes of fixed size, the validation rows) counted as measured."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.planned = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.planned = state.max_steps

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())
            if len(self.times) >= PROBE_STEPS:
                control.should_training_stop = True

    phases: dict[str, list[list[tuple[float, int]]]] = {}  # what -> its chunks of work, each [(time, items done)]

    def follow(what: str, done: int, total: int) -> None:
        if done == 0:  # a new chunk of work under this name (bias probes come in several)
            phases.setdefault(what, []).append([])
        phases[what][-1].append((time.perf_counter(), done))

    probe = config.model_copy(deep=True)
    probe.train.eval_steps = 10**6  # no validation or checkpoint inside the probe's steps
    classifier = config.method.stages[-1] == "classify"
    probe.eval.max_rows = PROBE_HEAD_ROWS if classifier else PROBE_ROWS
    probe.eval.base_rows, probe.eval.batch_size = PROBE_BASE_ROWS, PROBE_BATCH
    clock = Clock()
    scratch = out / "probe"
    began = time.perf_counter()
    try:
        train(probe, scratch, callbacks=[clock], eval_progress=follow, audit_event=None)  # not in the audit trail
        after = time.perf_counter() - (clock.times[-1] if clock.times else began)
        evaluated = (scratch / "eval" / "results.json").exists()
        sample = workload(scratch, probe.eval) if evaluated else {}
        full = workload(scratch, config.eval) if evaluated else {}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parts: dict[str, float] = {}
    for what, chunks in phases.items():
        key = _grows_with(what)
        if key and sample.get(key):
            parts[key] = parts.get(key, 0.0) + sum(_scaled(chunk, full[key] / sample[key]) for chunk in chunks)
            after -= sum(chunk[-1][0] - chunk[0][0] for chunk in chunks)
    gaps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return Probe(sum(gaps) / len(gaps) if gaps else float("nan"), clock.planned, after + sum(parts.values()), after,
                 parts, full)


def _scaled(chunk: list[tuple[float, int]], scale: float) -> float:
    """Seconds a chunk of work would take with `scale` times its items: its first batch as
    measured (it carries the warm-up: on the first Banking77 runs, scaling it with the rest made
    the estimate 70% too long), the other items at the rate of the later batches."""
    (t0, _), (t1, first), (tn, done) = chunk[0], chunk[min(1, len(chunk) - 1)], chunk[-1]
    if done <= first:  # a single batch: nothing to tell warm-up from work
        return (tn - t0) * scale
    return (t1 - t0) + (tn - t1) / (done - first) * (done * scale - first)


def _grows_with(what: str) -> str | None:
    """Which count of `evaluate.run.workload` an evaluation phase's work grows with (None: fixed)."""
    if what.endswith("bias probes"):
        return "bias_pairs"
    if what.startswith("base:") and what.endswith("labelling the test set"):
        return "base_rows"
    if what.endswith(("the test set", "the references", "the test text", "scoring the pairs", "rejected answers")):
        return "rows"
    return None


def _fit_budget(config: RunConfig, budget: str, seconds: float, start: float, out: Path,
                decide: Callable[[str, str], None]) -> tuple[RunConfig, float]:
    """Plan a `--budget` run from a probe run's measurements: the evaluation the probe timed,
    scaled to the full test set (or, when that would take more than `EVAL_MAX_SHARE` of the
    time left, to a seeded sample that fits), is kept for the end; training gets the rest and
    re-plans its length from the measured step time as it goes (`DeadlineCallback`). Returns
    the config and the instant training must end by."""
    measured = probe_run(config, out)
    left = seconds * (1 - BUDGET_MARGIN) - (time.perf_counter() - start)
    if math.isnan(measured.per_step):  # the whole run is shorter than the probe: nothing to plan
        decide("auto.budget", f"--budget {budget}: the whole run ({measured.planned} steps) is shorter than the "
                              f"{PROBE_STEPS}-step probe")
        return config, time.perf_counter() + left
    after, cap, rows = measured.after, EVAL_MAX_SHARE * left, measured.counts.get("rows", 0)
    evaluation = f"the full test set ({rows} rows)"
    base_rows, base_s = measured.counts.get("base_rows", 0), measured.parts.get("base_rows", 0.0)
    if after > cap and base_s and MIN_BASE_ROWS < base_rows < rows:
        # First the prompted base of a classifier, which answers a sample anyway and costs the most a row.
        keep = max(MIN_BASE_ROWS, math.floor((cap - (after - base_s)) * base_rows / base_s))
        if keep < base_rows:
            config = apply_overrides(config, {"eval.base_rows": keep}, source="auto")
            after -= base_s * (1 - keep / base_rows)
            config.reasons["eval.base_rows"] = (f"--budget {budget}: the prompted base answers a seeded sample of {keep} "
                                                f"test rows ({base_rows} would take {base_s / 60:.1f} min)")
            evaluation += f", the base on {keep} of them"
            base_s *= keep / base_rows
    grows = after - measured.fixed - base_s  # answers, labels and bias pairs: about linear in the test rows
    if after > cap and rows > MIN_EVAL_ROWS and grows > 0:
        keep = max(MIN_EVAL_ROWS, math.floor((cap - measured.fixed - base_s) * rows / grows))
        if keep < rows:
            config = apply_overrides(config, {"eval.max_rows": keep}, source="auto")
            after = measured.fixed + base_s + grows * keep / rows
            sample = f"a seeded sample of {keep} of the {rows} test rows (all would take {measured.after / 60:.1f} min)"
            config.reasons["eval.max_rows"] = f"--budget {budget}: the evaluation of {sample}"
            evaluation = sample + evaluation.removeprefix(f"the full test set ({rows} rows)")
    fit = math.floor((left - after) / measured.per_step)
    if fit < 5:
        raise ConfigError(f"--budget {budget} leaves time for {max(fit, 0)} training steps at {measured.per_step:.1f} s "
                          f"per step after {after / 60:.1f} min of evaluation; give a longer budget or less data.")
    # The trainer plans for the most a budget may train, MAX_GROWTH times auto's epochs, and the
    # deadline trims that to what its own measured step time fits: a probe that ran slow (a busy
    # machine, a first step's warm-up) neither caps the run nor leaves the budget unused, and
    # early stopping ends extra epochs that stop paying. It evaluates about 5 times over the
    # length expected.
    most = MAX_GROWTH * measured.planned
    expected = min(fit, most)
    config = apply_overrides(config, {"train.max_steps": most, "train.eval_steps": max(5, expected // 5)}, source="auto")
    fits = (f"all {measured.planned} planned steps fit with time to spare, so training runs up to {expected} "
            f"({expected / measured.planned:.1f}x the planned epochs; early stopping ends it sooner if validation stops "
            "improving)" if fit > measured.planned else f"{fit} of {measured.planned} planned steps fit")
    why = (f"--budget {budget}: {measured.per_step:.2f} s per step over a {PROBE_STEPS}-step probe, so about {fits}"
           + f" in {(left - after) / 60:.1f} min; the evaluation of {evaluation} measured on the probe needs about "
           f"{after / 60:.1f} min; training re-plans its length (and its learning-rate schedule) from the step "
           f"time it measures as it goes, up to {most} steps")
    config.reasons["train.max_steps"] = why
    decide("auto.budget", why)
    return config, time.perf_counter() + left - after


def _keep_general(config: RunConfig, stage: str, decide: Callable[[str, str], None]) -> RunConfig:
    """--keep-general: forgetting becomes an alarm, and chat training replays general chat rows
    (the shipped set) so the model stays a general assistant."""
    chosen: dict = {"eval.keep_general": True}
    if stage == "sft":
        chosen["data.replay_ratio"] = KEEP_GENERAL_REPLAY
        why = (f"--keep-general: {KEEP_GENERAL_REPLAY:.0%} of the training rows are general chat rows replayed against "
               "forgetting (the trade-off is in the README), and forgetting is an alarm")
    elif stage == "classify":
        why = ("--keep-general: a classification head leaves the model's text generation untouched; forgetting "
               "stays an alarm for any other stage")
    else:
        why = "--keep-general: forgetting is an alarm"
    config = apply_overrides(config, chosen, source="auto")
    config.reasons.update(dict.fromkeys(chosen, why))
    decide("auto.keep_general", why)
    return config


def run_auto(
    data: str,
    out: str | Path,
    test: str | None = None,
    task: str = "auto",
    budget: str | None = None,
    model: str = "smollm2-135m",
    columns: dict | None = None,
    force: bool = False,
    synth_below: int = 0,
    teacher=None,
    callbacks: list | None = None,
    eval_progress=None,
    say: Callable[[str], None] = lambda line: None,
    domain: str | None = None,
    template: str | None = None,
    audit: trail.Audit | None = None,
    overrides: dict | None = None,
    keep_general: bool = False,
) -> AutoResult:
    """Everything `tunesmith auto` does (see the module's docstring). `say(line)` reports
    each decision as it is made. Under `domain` (and its `template`) the run's entries go to
    `audit` (default: the CLI's log and user). `overrides` (dotted keys) are set over the plan."""
    start = time.perf_counter()
    out = Path(out)
    if (out / "config.yaml").exists():
        raise ConfigError(f"{out} already holds a run; choose another --output.")
    seconds = parse_budget(budget)
    pack, chosen = resolve(domain, template)  # a wrong pair is one sentence before anything runs
    decisions: dict[str, str] = {}

    def decide(key: str, why: str) -> None:
        decisions[key] = why
        say(why)

    if chosen is not None and task == "auto":
        try:
            found, stage, why = detect_task(data, columns, TEMPLATE_TASKS[chosen.task])
        except DataError:
            raise DataError(f"{data} does not hold data template {chosen.name} trains on ({chosen.task}: "
                            + ("text+label rows" if chosen.task == "classify" else "prompts with answers")
                            + "); give such a file, or --columns to read other columns.") from None
        why = f"template {chosen.name}: {why}"
    else:
        found, stage, why = detect_task(data, columns, task)
    decide("auto.task", why)
    redactions: dict = {}
    say(f"checking {data}" + (f" under the {pack.profile.name} profile (its named-entity model reads every row)"
                              if pack else "") + ": the data gate, with the embedding label check")
    train_file = gate(data, test, columns, found, out, force, decisions, pack.profile if pack else None, redactions)
    say(decisions["auto.gate"])
    if train_file != data:
        columns = None  # the cleaned copy is canonical JSONL
    rows = len(load_data(train_file, columns=columns).records)
    if synth_below:
        train_file = grow(train_file, columns, rows, synth_below, teacher, out, decisions)
        say(decisions["auto.synthetic"])
        if train_file.endswith("train_with_synthetic.jsonl"):
            columns = None
            rows = len(load_data(train_file).records)
    config = apply_overrides(RunConfig(), {
        "model.name": model, "data.train": train_file, "data.test": test, "data.columns": columns,
        "data.force": force, "method.stages": [stage],
    }, source="auto")
    config = apply_overrides(config, {"domain": domain, "template": template}, source="options")
    config = plan(config, rows, decisions)
    say(decisions["auto.memory"])
    deadline = None
    if seconds:
        say(f"--budget {budget}: timing {PROBE_STEPS} training steps and an evaluation of a sample of the test rows "
            "to plan the run")
        config, deadline = _fit_budget(config, budget, seconds, start, out, decide)
    if keep_general:
        config = _keep_general(config, stage, decide)
    if overrides:  # the caller's own settings (quickstart's --max-steps, --report-to) win over the plan
        config = apply_overrides(config, overrides, source="options")
    config.reasons.update(decisions)
    extra = {"redactions": {k: redactions[k] for k in ("rows", "kinds") if k in redactions} or {"rows": 0, "kinds": {}},
             "findings_before": redactions.get("findings_before"),  # the gate on the data as given
             "source_data": [trail.file_facts(data, "train (as given)", columns if train_file == data else None)]
             } if pack else None
    if deadline is not None:
        callbacks = [*(callbacks or []), DeadlineCallback(deadline)]
    summary = train(config, out, callbacks=callbacks, eval_progress=eval_progress, say=say, audit=audit,
                    audit_event="auto", audit_extra=extra)
    return AutoResult(out, None, decisions, summary.evaluation, time.perf_counter() - start, summary)

"""The model card: `RUN/MODEL_CARD.md`, Hugging Face style (YAML front matter, then
Markdown), filled from the run rather than from boilerplate.

Every figure comes from the run directory (`config.yaml` with the reasons for each auto
value, `run.json`, `data_card.json`, the training file's provenance columns) or from the
evaluation results (`RUN/eval/results.json`); where something was not measured the card says
so instead of guessing. Multi-stage runs read each stage's own `RUN/<stage>/` folder.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import yaml

from tunesmith.config import PREFERENCE_STAGES, RL_STAGES, RunConfig, load_config
from tunesmith.data.load import read_records
from tunesmith.domains import audit as trail
from tunesmith.domains.packs import get_domain
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.report import (
    alarms,
    as_json,
    fmt_number,
    higher_is_better,
    metric_name,
    metric_rows,
    pct,
    read_json,
    run_stages,
    skipped_line,
    test_set_line,
    tool_rows_line,
    value_line,
    verdict,
)
from tunesmith.export.build import export_reports
from tunesmith.models import BUILTIN_MODELS
from tunesmith.runs import CONFIG_FILE, EvalResults, RunDir

SMALL_TEST = 100  # test sets under this many rows get a warning about wide intervals
WEAK_F1 = 0.5  # classes below this tuned F1 are listed as a limitation
Z95 = 1.959964  # normal quantile of a two-sided 95% interval

STAGE_TEXT = {
    "pretrain": "continued pretraining on raw text",
    "sft": "supervised fine-tuning on example conversations",
    "classify": "training a classification head on labelled texts",
    "reward": "training a reward model on preference pairs",
    "dpo": "direct preference optimisation (DPO) on preference pairs",
    "orpo": "odds-ratio preference optimisation (ORPO) on preference pairs",
    "simpo": "simple preference optimisation (SimPO) on preference pairs",
    "kto": "KTO on answers marked good or bad",
    "grpo": "reinforcement learning with GRPO against rewards",
    "rloo": "reinforcement learning with RLOO against rewards",
}
ADAPTER_TEXT = {
    "lora": "LoRA", "rslora": "rank-stabilised LoRA", "dora": "DoRA", "pissa": "PiSSA (LoRA with SVD initialisation)",
    "olora": "OLoRA (LoRA with QR initialisation)", "loha": "LoHa", "lokr": "LoKr", "ia3": "IA3",
    "prompt": "prompt tuning", "prefix": "prefix tuning", "full": "full fine-tuning",
}
TASK_TEXT = {
    "labels": "labelling texts",
    "generation": "answering prompts",
    "text": "writing text in the style and domain of its training corpus",
    "preference": "answering prompts the way the preferred answers of its training pairs do",
    "reward": "scoring answers (a reward model)",
    "tool_calls": "calling the tools it is offered (a function and its JSON arguments), or answering in text when no call is due",
}
SETTINGS = [  # (config section, field, what it is)
    ("train", "learning_rate", "learning rate"),
    ("train", "epochs", "epochs"),
    ("train", "max_steps", "max steps"),
    ("train", "batch_size", "batch size"),
    ("train", "gradient_accumulation", "gradient accumulation"),
    ("train", "max_length", "max length (tokens)"),
    ("train", "pack_length", "pack length (tokens)"),
    ("train", "warmup_ratio", "warm-up share"),
    ("train", "weight_decay", "weight decay"),
    ("train", "eval_steps", "evaluate every (steps)"),
    ("train", "early_stopping_patience", "early-stopping patience"),
    ("train", "best_metric", "best-checkpoint metric"),
    ("train", "seed", "seed"),
    ("data", "validation_split", "validation split"),
    ("data", "test_split", "test split"),
]


# --------------------------------------------------------------------------- reading the run


def _config(path: Path) -> RunConfig | None:
    return load_config(path) if path.exists() else None


def _base_licence(name: str) -> str | None:
    info = BUILTIN_MODELS.get(name)
    return info.licence if info else None


def _base_params(name: str, stages: list[dict]) -> int | None:
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name].params
    totals = [s["summary"].get("total_params") for s in stages if s["summary"].get("total_params")]
    return totals[0] if totals else None


def _resolve(path: str, run_dir: Path) -> Path | None:
    candidate = Path(path).expanduser()
    if candidate.exists():
        return candidate
    if not candidate.is_absolute() and (run_dir / candidate).exists():
        return run_dir / candidate
    return None


def provenance(path: str | Path) -> dict:
    """Count a training file's synthetic and augmented rows from its provenance columns: a row
    with a `teacher` is synthetic (`tunesmith data synth`), a row whose `method` is not
    `original` and that has no teacher is an augmented copy (`tunesmith data augment`).
    Returns rows, synthetic, augmented, teachers and methods (Counters)."""
    records = read_records(path)
    teachers: Counter = Counter()
    synth_methods: Counter = Counter()
    aug_methods: Counter = Counter()
    for record in records:
        data = record.data
        method = data.get("method")
        if data.get("teacher"):
            teachers[str(data["teacher"])] += 1
            synth_methods[str(method or "?")] += 1
        elif method and method != "original":
            aug_methods[str(method)] += 1
    return {
        "rows": len(records),
        "synthetic": sum(teachers.values()),
        "augmented": sum(aug_methods.values()),
        "teachers": teachers,
        "synthetic_methods": synth_methods,
        "augmented_methods": aug_methods,
    }


def _share(part: int, whole: int) -> str:
    return f"{part:,} of {whole:,} rows ({pct(part / whole) if whole else '0.0%'})"


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counter.most_common())


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a share `p` measured on `n` rows (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- markdown helpers


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str) -> str:
    return f"`{text}`"


def _number(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --------------------------------------------------------------------------- sections


class _Run:
    """Everything the card reads, gathered once."""

    def __init__(self, run_dir: Path, results: dict):
        self.dir = run_dir
        self.results = results
        self.config = _config(RunDir(run_dir).path / CONFIG_FILE)
        self.stages = run_stages(run_dir)
        for stage in self.stages:
            stage["config"] = _config(stage["dir"] / CONFIG_FILE) or self.config
            stage["card"] = read_json(RunDir(stage["dir"]).data_card_file)
        self.final = self.stages[-1] if self.stages else {"stage": "", "summary": {}, "config": None, "card": None}
        self.base = (self.config.model.name if self.config else None) or results.get("base_model") or "unknown"
        self.name = results.get("run") or str(run_dir)
        self.stage_names = [s["stage"] for s in self.stages if s["stage"]] or [results.get("stage") or "?"]
        final_stage = results.get("stage") or self.stage_names[-1]
        self.classifier = final_stage == "classify"
        self.reward = final_stage == "reward"
        self.method = self.config.method if self.config else None

    def adapter_text(self) -> str:
        m = self.method
        if m is None:
            return "an unknown method (no config.yaml)"
        name = ADAPTER_TEXT.get(m.adapter, m.adapter)
        if m.adapter in ("lora", "rslora", "dora", "pissa", "olora", "loha", "lokr"):
            targets = m.target_modules if isinstance(m.target_modules, str) else ", ".join(m.target_modules)
            text = f"{name} adapters (rank {m.lora_r}, alpha {m.alpha}, dropout {m.lora_dropout:g}) on {targets}"
        elif m.adapter in ("prompt", "prefix"):
            text = f"{name} ({m.num_virtual_tokens} virtual tokens)"
        elif m.adapter == "full":
            text = name + (f" with the bottom {m.freeze_layers} layers frozen" if m.freeze_layers else "")
        else:
            text = name
        if m.quantize != "none":
            text += f" on a {m.quantize} quantized base model" + (" (QLoRA)" if m.quantize == "4bit" else "")
        return text

    def n_labels(self) -> int | None:
        labels = (self.results.get("labels") or {}).get("labels")
        if labels:
            return len(labels)
        card = self.final.get("card") or {}
        stats_labels = (card.get("stats") or {}).get("labels")
        return len(stats_labels) if stats_labels else None

    def task_text(self) -> str:
        task = self.results.get("task")
        text = TASK_TEXT.get(task, f"the task '{task}'" if task else "its training task")
        if task == "labels" and self.n_labels():
            text = f"labelling texts with one of {self.n_labels():,} labels"
        return text


def _front_matter(run: _Run) -> str:
    licence = _base_licence(run.base)
    adapter = run.method.adapter if run.method else None
    tags = ["tunesmith"]
    if adapter:
        tags.append("full-fine-tune" if adapter == "full" else adapter)
        if run.method.quantize == "4bit" and adapter == "lora":
            tags.append("qlora")
    tags += [s for s in run.stage_names if s not in tags]
    meta = {"base_model": run.base}
    if licence:
        meta["license"] = licence.lower()
    meta["library_name"] = "transformers" if adapter in (None, "full") else "peft"
    meta["pipeline_tag"] = "text-classification" if run.classifier or run.reward else "text-generation"
    meta["tags"] = tags
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _summary(run: _Run) -> str:
    stages = run.stage_names
    if len(stages) == 1:
        how = f"in one stage, {stages[0]} ({STAGE_TEXT.get(stages[0], stages[0])})"
    else:
        how = f"in {len(stages)} stages, " + ", then ".join(f"{s} ({STAGE_TEXT.get(s, s)})" for s in stages)
    text = (f"This model is `{run.base}` fine-tuned with tunesmith (run `{run.name}`) {how}, using "
            f"{run.adapter_text()}.")
    s = run.final["summary"]
    if s.get("trainable_params") and s.get("total_params"):
        text += (f" It trained {s['trainable_params']:,} of {s['total_params']:,} parameters "
                 f"({pct(s['trainable_params'] / s['total_params'], 2)}).")
    text += f" Its task is {run.task_text()}."
    line = verdict(run.results)
    if run.results.get("metrics"):
        text += f" On the test set ({test_set_line(run.results)}): {line[0].lower()}{line[1:]}"
    return "## Model summary\n\n" + text


def _intended_use(run: _Run) -> str:
    out = ["## Intended use", ""]
    task = run.results.get("task")
    card = run.final.get("card") or {}
    data_path = card.get("path") or (run.config.data.train if run.config else None)
    languages = (card.get("stats") or {}).get("languages") or {}
    use = f"{run.task_text()[0].upper()}{run.task_text()[1:]}"
    if data_path:
        use += f" for inputs like those in its training data (`{data_path}`)"
    if languages:
        use += f", in the language{'s' if len(languages) > 1 else ''} of that data ({', '.join(languages)})"
    out.append(use + ".")
    labels = (run.results.get("labels") or {}).get("labels") or list((card.get("stats") or {}).get("labels") or {})
    if task == "labels" and labels:
        shown = ", ".join(f"`{x}`" for x in labels[:20]) + (f" and {len(labels) - 20} more" if len(labels) > 20 else "")
        out += ["", f"The labels: {shown}."]
    prompt = run.config.data.system_prompt if run.config else None
    if prompt:
        out += ["", (f"It was trained with the system prompt \"{prompt}\", which tunesmith adds to every conversation "
                "that has none; give the same system prompt when you call the model another way.")]
    out += ["", "Out of scope:", ""]
    if task == "labels":
        out.append("- Texts whose answer is none of the labels above: the model still picks one of them.")
    out += [
        ("- Inputs unlike the training data (other topics, other languages, much longer texts): quality there was "
        "not measured."),
        "- Decisions about people (credit, hiring, health, legal matters) without a person reviewing each answer.",
    ]
    if task in ("generation", "text", "preference"):
        out.append("- Factual questions where a wrong answer does harm: the model can state false things fluently.")
    if task == "tool_calls":
        out.append("- Running its calls unchecked: a call can name the wrong function or carry wrong arguments, so "
                   "check each one against the tool's schema, and confirm actions that cannot be undone (payments, "
                   "cancellations) with a person.")
    return "\n".join(out)


def _base_section(run: _Run) -> str:
    licence = _base_licence(run.base)
    info = BUILTIN_MODELS.get(run.base)
    out = ["## Base model and licence", ""]
    if info:
        out.append(f"Base model: `{run.base}`, {info.description}, {info.params / 1e6:.0f}M parameters, a model "
                   "built into tunesmith (loaded offline).")
        out += ["", (f"Licence: {licence}. The fine-tuned weights are a derivative of the base model, so its licence "
                "terms apply to them as well.")]
    else:
        out.append(f"Base model: `{run.base}`.")
        out += ["", ("Licence: unknown to tunesmith (not a built-in model). Check the base model's own model card "
                "for its licence and terms of use before you share or deploy this model.")]
    return "\n".join(out)


def _pii_text(card: dict) -> str:
    found = [f for f in card.get("findings") or [] if f.get("check") == "pii"]
    if not found:
        return ("the data gate's PII check found no personal data or secrets (e-mail addresses, phone numbers, card "
                "numbers, IBANs, social security numbers, IP addresses, API keys) in the training data.")
    rows = sum(int(f.get("count") or 0) for f in found)
    what = " ".join(str(f.get("message", "")).strip() for f in found)
    return (f"the data gate found personal data in {rows:,} row(s): {what} These were warnings, so training went ahead "
            "on the rows as they were, without redaction: the model may have memorised this data and can repeat it. "
            f"Redact it (`tunesmith data check {card.get('path', 'DATA')} --fix CLEAN.jsonl`) and retrain before "
            "the model is shared.")


def _provenance_text(card: dict, stage: dict, run: _Run) -> str:
    path = card.get("path") or (stage["config"].data.train if stage.get("config") else None)
    resolved = _resolve(path, run.dir) if path else None
    if resolved is None:
        return f"unknown: the training file{f' `{path}`' if path else ''} is no longer there to read."
    try:
        counts = provenance(resolved)
    except (TunesmithError, OSError, ValueError) as exc:  # the file may have changed since training
        return f"unknown: the training file could not be read ({exc})."
    n = counts["rows"]
    parts = [f"{_share(counts['synthetic'], n)} are synthetic"]
    if counts["synthetic"]:
        parts[-1] += (f" (written by {_counts(counts['teachers'])} via {_counts(counts['synthetic_methods'])} with "
                      "`tunesmith data synth`)")
    parts.append(f"{_share(counts['augmented'], n)} are augmented copies")
    if counts["augmented"]:
        parts[-1] += f" ({_counts(counts['augmented_methods'])}, from `tunesmith data augment`)"
    original = n - counts["synthetic"] - counts["augmented"]
    parts.append(f"the other {_share(original, n)} carry no synthetic or augmentation mark")
    return "; ".join(parts) + "."


def _data_section(run: _Run) -> str:
    out = ["## Training data", ""]
    multi = len(run.stages) > 1
    for stage in run.stages:
        card = stage.get("card")
        s = stage["summary"]
        cfg = stage.get("config")
        if multi:
            out += [f"### Stage {stage['stage']}", ""]
        if not card:
            path = cfg.data.train if cfg else None
            out += [f"- File: `{path}`" if path else "- File: unknown", ("- No data card (data_card.json) was found, "
                    "so quality, personal data and provenance are unknown."), ""]
            continue
        summary = card.get("summary") or {}
        stats = card.get("stats") or {}
        lines = [(f"- File: `{card.get('path', '?')}` ({card.get('format', '?')} format, {card.get('task', '?')} task), "
                 f"{card.get('rows') or 0:,} rows.")]
        if s.get("train_rows") is not None:
            lines.append(f"- Rows used: {s['train_rows']:,} for training, {s.get('validation_rows') or 0:,} for "
                         "validation" + (f" (held out from `{card.get('path')}`)" if cfg and not cfg.data.validation
                                         else f" (from `{cfg.data.validation}`)" if cfg else "") + ".")
        if cfg and cfg.data.test_split != "auto" and float(cfg.data.test_split) > 0 and not cfg.data.test:
            lines.append(f"- Test rows: {cfg.data.test_split:.0%} of the file held out before training (never trained "
                         "on); the evaluation below uses them.")
        if s.get("truncated_rows"):
            lines.append(f"- Rows cut at the maximum length: {s['truncated_rows']:,}.")
        if summary:
            lines.append(f"- Quality score: {summary.get('quality_score', '?')} / 100, with "
                         f"{summary.get('errors', 0)} error(s) and {summary.get('warnings', 0)} warning(s) from the "
                         "data gate.")
        if stats.get("trained_despite_errors"):
            lines.append("- **Trained despite data-gate errors** (`--force`); the errors are listed in "
                         "`data_card.json`.")
        else:
            lines.append("- Trained despite data-gate errors: no.")
        lines.append(f"- Personal data: {_pii_text(card)}")
        lines.append(f"- Synthetic and augmented share: {_provenance_text(card, stage, run)}")
        problems = [f for f in card.get("findings") or [] if f.get("check") != "pii"]
        if problems:
            lines.append("- Data-gate findings: " + " ".join(
                f"({f.get('severity', '?')}) {f.get('message', '')}" for f in problems[:5])
                + (f" ... and {len(problems) - 5} more in data_card.json." if len(problems) > 5 else ""))
        out += lines + [""]
    return "\n".join(out).rstrip()


def _procedure_section(run: _Run) -> str:
    out = ["## Training procedure", ""]
    stages = run.stage_names
    out.append(f"- Stages: {', '.join(stages)} (" + "; ".join(STAGE_TEXT.get(s, s) for s in stages) + ").")
    out.append(f"- Method: {run.adapter_text()}.")
    if run.method:
        extras = []
        if run.method.neftune_alpha:
            extras.append(f"NEFTune noise {run.method.neftune_alpha:g}")
        if run.method.label_smoothing:
            extras.append(f"label smoothing {run.method.label_smoothing:g}")
        if run.method.checkpointing:
            extras.append("gradient checkpointing")
        if run.method.beta is not None and any(s in PREFERENCE_STAGES + RL_STAGES for s in stages):
            extras.append(f"beta {run.method.beta:g}")
        if extras:
            out.append("- Also: " + ", ".join(extras) + ".")
    seconds = [st["summary"].get("train_runtime_s") for st in run.stages]
    seconds = [x for x in seconds if isinstance(x, (int, float))]
    if seconds:
        out.append(f"- Training time: {sum(seconds):,.0f} s ({sum(seconds) / 60:.1f} min).")
    for stage in run.stages:
        s = stage["summary"]
        name = f" ({stage['stage']})" if len(run.stages) > 1 else ""
        if s.get("global_step") is not None:
            out.append(f"- Optimizer steps{name}: {s['global_step']:,}.")
        if s.get("best_eval_loss") is not None:
            out.append(f"- Best validation loss{name}: {s['best_eval_loss']:.4f}.")
    over = run.results.get("overfitting") or {}
    if over.get("best_step") is not None:
        out.append(f"- Lowest validation loss at step {over['best_step']} (of {over.get('evaluations', '?')} "
                   "evaluations).")
    for stage in run.stages:
        cfg = stage.get("config")
        if cfg is None:
            continue
        rows = []
        for section, field, label in SETTINGS:
            value = getattr(getattr(cfg, section), field, None)
            if value is None:
                continue
            rows.append([label, _number(value), cfg.reasons.get(f"{section}.{field}", "")])
        title = f"Settings of stage {stage['stage']}" if len(run.stages) > 1 else "Settings"
        out += ["", (f"{title} (the resolved values of `config.yaml`; \"why\" is the reason recorded for an auto "
                "value):"), "", _table(["setting", "value", "why"], rows)]
    return "\n".join(out)


def _evaluation_section(run: _Run) -> str:
    r = run.results
    out = ["## Evaluation", "", f"Test set: {test_set_line(r)}. The base and the tuned model answered the same rows."]
    if r.get("created"):
        out[-1] += f" Evaluated {r['created']}."
    rows = metric_rows(r)
    if rows:
        out += ["", _table(
            ["metric", "base", "tuned", "change"],
            [[metric_name(x["metric"]) + ("" if higher_is_better(x["metric"]) else " (lower is better)"),
              _fmt(x, "base"), _fmt(x, "tuned"), x["change"] + (f" ({x['direction']})" if x["direction"] else "")]
             for x in rows]), "", verdict(r)]
    else:
        out += ["", skipped_line(r, "metrics", "metrics")]
    calls = r.get("tool_calls")
    if calls:
        out += ["", "### Tool calls", "", tool_rows_line(r)]
        tuned, base = ((calls.get("per_tool") or {}).get(side) or {} for side in ("tuned", "base"))
        names = sorted(set(tuned) | set(base))
        if names:
            def share(scores: dict, key: str) -> str:
                return pct(scores[key]) if isinstance(scores.get(key), (int, float)) else "—"

            out += ["", _table(
                ["function", "test rows", "base name accuracy", "tuned name accuracy", "base exact match",
                 "tuned exact match"],
                [[f"`{n}`", (tuned.get(n) or base.get(n) or {}).get("rows", ""),
                  share(base.get(n) or {}, "tool_name_accuracy"), share(tuned.get(n) or {}, "tool_name_accuracy"),
                  share(base.get(n) or {}, "tool_call_exact_match"), share(tuned.get(n) or {}, "tool_call_exact_match")]
                 for n in names])]
    judge = r.get("judge")
    out += ["", "### LLM judge", ""]
    if judge:
        out.append(
            f"{judge.get('judge', 'A judge model')} compared the two models' answers on {judge.get('prompts', '?')} "
            f"prompts (rubric: \"{judge.get('rubric', '')}\"): the tuned model won {_rate(judge, 'win_rate', 'wins')}, "
            f"tied {_rate(judge, 'tie_rate', 'ties')} and lost {_rate(judge, 'loss_rate', 'losses')}."
            + (f" {judge['inconsistent']} verdicts were inconsistent when the answer order was swapped."
               if judge.get("inconsistent") else "")
            + (f" {judge['unparsed']} verdicts could not be read." if judge.get("unparsed") else ""))
    else:
        out.append(skipped_line(r, "judge", "the LLM-judge comparison"))
    labels = r.get("labels")
    if labels:
        tuned = (labels.get("per_class") or {}).get("tuned") or {}
        base = (labels.get("per_class") or {}).get("base") or {}
        ranked = sorted(tuned, key=lambda n: (-tuned[n].get("f1", 0.0), n))
        if ranked:
            def rows_of(names):
                return [[n, pct(tuned[n].get("f1", 0.0)), pct(base[n]["f1"]) if n in base else "—",
                         tuned[n].get("support", "")] for n in names]
            header = ["label", "tuned F1", "base F1", "test rows"]
            if len(ranked) <= 10:
                out += ["", "### Per label (tuned F1, best first)", "", _table(header, rows_of(ranked))]
            else:
                out += ["", "### Best 5 labels (tuned F1)", "", _table(header, rows_of(ranked[:5])),
                        "", "### Worst 5 labels (tuned F1)", "", _table(header, rows_of(ranked[-5:][::-1]))]
    return "\n".join(out)


def _fmt(row: dict, side: str) -> str:
    value = row[side]
    if value is None:
        return "—"
    return pct(value) if row["share"] else fmt_number(value)


def _rate(judge: dict, rate: str, count: str) -> str:
    if judge.get(rate) is None:
        return f"{judge.get(count, '?')}"
    return pct(judge[rate]) + (f" ({judge[count]})" if judge.get(count) is not None else "")


def _forgetting_section(run: _Run) -> str:
    f = run.results.get("forgetting")
    out = ["## Forgetting", ""]
    if not f:
        return "\n".join(out + [skipped_line(run.results, "forgetting", "forgetting")])
    ppl, probes = f.get("general_perplexity"), f.get("probes")
    if ppl:
        change = f", {ppl['change']:+.1%}" if ppl.get("change") is not None else ""
        out.append(f"- Perplexity on general text: {fmt_number(ppl.get('base'))} (base) -> "
                   f"{fmt_number(ppl.get('tuned'))} (tuned){change}; lower is better.")
    if probes:
        change = f", {100 * probes['change']:+.1f} pp" if probes.get("change") is not None else ""
        out.append(f"- General-knowledge probes answered ({probes.get('n', '?')}): {_pct_or(probes, 'base')} (base) "
                   f"-> {_pct_or(probes, 'tuned')} (tuned){change}.")
    threshold = f" (threshold {pct(f['threshold'])})" if f.get("threshold") is not None else ""
    alarm = f.get("alarm", f.get("flagged"))
    flagged = "**yes**" if alarm else "beyond the threshold, as information" if f.get("flagged") else "no"
    out.append(f"- Flagged: {flagged}{threshold}.")
    out += [f"- {x}" for x in f.get("findings") or []]
    if f.get("rule"):
        out.append(f"- {f['rule']}")
    return "\n".join(out)


def _bias_section(run: _Run) -> str:
    bias = run.results.get("bias")
    out = ["## Bias", ""]
    if not bias or not (bias.get("base") or bias.get("tuned")):
        return "\n".join(out + [skipped_line(run.results, "bias", "bias")])
    base, tuned = bias.get("base") or {}, bias.get("tuned") or {}
    out.append("Each prompt was asked twice with only a group attribute swapped (counterfactual pairs); a fair "
               "model answers both the same way.")
    rows = []
    for attr in dict.fromkeys([*(tuned.get("by_attribute") or {}), *(base.get("by_attribute") or {})]):
        b = (base.get("by_attribute") or {}).get(attr) or {}
        t = (tuned.get("by_attribute") or {}).get(attr) or {}
        rows.append([attr, t.get("groups") or b.get("groups") or "", t.get("pairs", b.get("pairs", "")),
                     _pct_or(b, "changed_rate"), _pct_or(t, "changed_rate"), _gap(b, "sentiment_gap"),
                     _gap(t, "sentiment_gap")])
    rows.append(["all", "", tuned.get("pairs", base.get("pairs", "")), _pct_or(base, "changed_rate"),
                 _pct_or(tuned, "changed_rate"), _gap(base, "sentiment_gap"), _gap(tuned, "sentiment_gap")])
    out += ["", _table(["attribute", "groups", "pairs", "answer changed (base)", "answer changed (tuned)",
                        "sentiment gap (base)", "sentiment gap (tuned)"], rows), ""]
    threshold = tuned.get("threshold", base.get("threshold"))
    out.append(f"- Flagged for the tuned model: {'**yes**' if tuned.get('flagged') else 'no'}"
               + (f" (threshold {pct(threshold)})" if threshold is not None else "") + ".")
    if base:
        out.append(f"- Flagged for the base model: {'yes' if base.get('flagged') else 'no'}.")
    out += [f"- {x}" for x in tuned.get("findings") or []]
    out += [f"- Information, not an alarm: {x}" for x in tuned.get("notes") or []]
    return "\n".join(out)


def _pct_or(d: dict, key: str) -> str:
    return pct(d[key]) if d.get(key) is not None else "—"


def _gap(d: dict, key: str) -> str:
    return f"{d[key]:+.3f}" if d.get(key) is not None else "—"


def _value_section(run: _Run) -> str:
    value = run.results.get("value")
    if not value:
        return ""
    try:
        line = value_line(value)
    except (KeyError, TypeError, ValueError):
        line = ", ".join(f"{k} {v}" for k, v in value.items())
    return ("## Value\n\n" + f"Estimated time saved: {line} Formula: {value.get('formula', 'as above')}. This "
            "assumes every correct answer saves the full manual time and a wrong one saves nothing; it is an "
            "estimate from your inputs, not a measurement.")


def _limitations(run: _Run) -> str:
    r = run.results
    out = ["## Limitations", ""]
    n = (r.get("test") or {}).get("rows")
    tuned = ((r.get("metrics") or {}).get("tuned")) or {}
    base = ((r.get("metrics") or {}).get("base")) or {}
    key = next((k for k in ("accuracy", "exact_match", "tool_call_exact_match") if isinstance(tuned.get(k), (int, float))), None)
    if key == "tool_call_exact_match":  # measured on the rows that expect a call only
        n = (r.get("tool_calls") or {}).get("call_rows", n)
    if isinstance(n, int) and n > 0:
        if key:
            lo, hi = wilson(tuned[key], n)
            text = (f"The tuned {metric_name(key)} of {pct(tuned[key])} was measured on {n:,} test rows; its 95% "
                    f"interval (Wilson) is {pct(lo)} to {pct(hi)}")
            if isinstance(base.get(key), (int, float)):
                blo, bhi = wilson(base[key], n)
                text += f" (base: {pct(base[key])}, {pct(blo)} to {pct(bhi)})"
            text += "."
            if n < SMALL_TEST:
                text = f"Small test set ({n:,} rows under {SMALL_TEST}): measured figures are uncertain. " + text
            out.append(f"- {text}")
        elif n < SMALL_TEST:
            out.append(f"- Small test set ({n:,} rows, under {SMALL_TEST}): every measured figure has a wide "
                       "uncertainty.")
    test_source = str((r.get("test") or {}).get("source") or "")
    if "held-out" in test_source or "split" in test_source:
        out.append("- The test set is a held-out split of the training file, so it comes from the same source as the "
                   "training data; it says little about inputs from elsewhere.")
    for alarm in alarms(r, run.dir):
        out.append(f"- Flagged: {alarm}")
    for section, reason in (r.get("skipped") or {}).items():
        out.append(f"- Not measured: {section} ({str(reason).rstrip('.')}).")
    per_class = ((r.get("labels") or {}).get("per_class") or {}).get("tuned") or {}
    weak = sorted((v.get("f1", 0.0), k) for k, v in per_class.items() if v.get("f1", 0.0) < WEAK_F1)
    if weak:
        names = ", ".join(f"`{k}` ({pct(f)})" for f, k in weak[:10])
        more = f" and {len(weak) - 10} more" if len(weak) > 10 else ""
        out.append(f"- {len(weak)} of {len(per_class)} labels have a tuned F1 below {pct(WEAK_F1, 0)}: {names}{more}; "
                   "answers with these labels are unreliable.")
    params = _base_params(run.base, run.stages)
    if params:
        size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
        text = f"- The base model has {size} parameters"
        if params < 1e9:
            text += (": a small model knows few facts, follows complex instructions poorly and can answer wrongly "
                     "with confidence")
        out.append(text + ".")
    if len(out) == 2:
        out.append("- Nothing specific was found; the model is only as good as its test set shows.")
    return "\n".join(out)



def _ethics(run: _Run) -> str:
    out = ["## Ethical considerations", ""]
    bias = (run.results.get("bias") or {}).get("tuned")
    if bias:
        rate = f", answers changed for {pct(bias['changed_rate'])} of {bias.get('pairs', '?')} pairs" if bias.get(
            "changed_rate") is not None else ""
        out.append(f"- Bias: the counterfactual test {'**flagged**' if bias.get('flagged') else 'did not flag'} the "
                   f"tuned model{rate}. Only the attributes listed above were tested.")
    else:
        out.append(f"- Bias: {skipped_line(run.results, 'bias', 'bias')} Test the model on your own groups of concern "
                   "before use.")
    for stage in run.stages:
        card = stage.get("card")
        prefix = f" ({stage['stage']} data)" if len(run.stages) > 1 else ""
        if card:
            out.append(f"- Personal data{prefix}: {_pii_text(card)}")
        else:
            out.append(f"- Personal data{prefix}: unknown (no data card).")
    out.append("- The fine-tuning data shapes what the model says: it learns the data's mistakes and one-sidedness "
               "as well as its task.")
    out.append("- These automatic checks do not replace a review: check the model against your organisation's own "
               "standards, legal and privacy review and the people affected by its answers before deployment, and "
               "keep a person in the loop for consequential decisions.")
    return "\n".join(out)


def _how_to_use(run: _Run) -> str:
    name = run.name
    if run.classifier:
        lines = [f"tunesmith predict {name} --text \"...\"", (f"tunesmith predict {name} --file texts.csv --out "
                 "predictions.jsonl")]
    elif run.reward:
        lines = [f"tunesmith score {name} --file PAIRS.jsonl"]
    else:
        lines = [f"tunesmith chat {name}", f"tunesmith generate {name} --prompt \"...\"",
                 f"tunesmith generate {name} --file prompts.jsonl --out answers.jsonl",
                 f"tunesmith generate {name} --base --prompt \"...\"   # the untuned base model, to compare"]
    return "## How to use\n\n```bash\n" + "\n".join(lines) + "\n```"


def _regulated_section(run: _Run) -> str:
    """A run under a domain pack: intended and out-of-scope use and human oversight (from the
    pack), data governance (the compliance profile, its findings, redactions, data hashes),
    the evaluation against the pack, transparency items in the spirit of the EU AI Act, and
    the audit-trail entries that record the run."""
    config = run.config
    if config is None or not config.domain:
        return ""
    pack = get_domain(config.domain)
    entries = trail.full_entries(run.dir)
    template = f", template `{config.template}`" if config.template else ""
    out = ["## Regulated use", "", (f"Trained and evaluated under tunesmith's **{pack.name}** domain pack ({pack.title}"
           f"{template}). This section is written for the people who approve, deploy and oversee the model.")]
    out += ["", "### Intended use and out of scope", "", f"- Intended use: {pack.intended_use}", "- Out of scope:"]
    out += [f"  - {item}." for item in pack.out_of_scope]
    out += ["", "### Human oversight", "", f"- {pack.oversight}"]
    a = run.results.get("abstention") or {}
    if a.get("threshold") is not None:
        out.append(f"- Below a confidence of {a['threshold']:.3g} (calibrated on the validation rows to answer "
                   f"{pct(a.get('target_coverage') or 0)} of them) the model answers \"{a.get('refer', 'refer to a person')}\" "
                   "instead of a label; route those items to a person.")
    out.append("- Keep a person able to overrule, stop and correct the model, and review its mistakes regularly.")
    out += ["", "### Data governance", ""] + _governance(run, pack, entries)
    out += ["", "### Evaluation against the pack", ""] + _pack_evaluation(run.results)
    out += ["", "### Transparency (in the spirit of the EU AI Act)", ""] + _transparency(run, pack)
    out += ["", "### Audit trail", ""] + _audit_lines(run, entries)
    return "\n".join(out)


def _governance(run: _Run, pack, entries: list[dict]) -> list[str]:
    profile = pack.profile
    out = [(f"- Compliance profile applied by the data gate: `{profile.name}`, {profile.regulation}; identifiers "
            f"checked: {', '.join(profile.kinds)}. Every identifier found is an error that blocks training.")]
    card = run.final.get("card") or {}
    found = trail.findings_summary(card) if card else {}
    if found:
        kinds = found.get("identifiers") or {}
        named = ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())) if kinds else "none"
        out.append(f"- Findings on the data that trained: {found.get('errors', 0)} error(s), {found.get('warnings', 0)} "
                   f"warning(s); identifiers per kind: {named}.")
        if found.get("trained_despite_errors"):
            out.append("- **Trained despite data-gate errors** (`--force`): the findings are in `data_card.json`.")
    else:
        out.append("- Findings: unknown (no data card).")
    trained = [e for e in entries if e.get("event") in ("train", "auto") and not e.get("missing")]
    before = ((trained[-1].get("findings_before") or {}) if trained else {}).get("identifiers") or {}
    if before:
        out.append("- Identifiers found in the data as given, before redaction: "
                   + ", ".join(f"{k} {v:,} row(s)" for k, v in sorted(before.items())) + ".")
    if trained:
        red = trained[-1].get("redactions") or {}
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted((red.get("kinds") or {}).items()))
        out.append(f"- Redactions before training: {red.get('rows', 0):,} row(s)" + (f" (placeholders: {kinds})" if kinds else "")
                   + ("; the rows as given are listed below as `train (as given)`, the redacted copy as `train`."
                      if trained[-1].get("source_data") else "."))
        files = list(trained[-1].get("source_data") or []) + list(trained[-1].get("data") or [])
    else:
        out.append("- Redactions before training: not recorded (the run has no training entry in the audit trail).")
        files = [trail.file_facts(run.config.data.train, "train", run.config.data.columns)] if run.config.data.train else []
    if files:
        out += ["", _table(["data", "file", "rows", "SHA-256"], [
            [f.get("role", "?"), f"`{f.get('path')}`", "-" if f.get("rows") is None else f"{f['rows']:,}",
             f"`{f['sha256']}`" if f.get("sha256") else "not found"] for f in files])]
    return out


def _pack_evaluation(r: dict) -> list[str]:
    skipped = r.get("skipped") or {}
    a = r.get("abstention") or {}
    test = a.get("test") or {}
    if test:
        line = (f"- Abstention: at the calibrated threshold the model answered {pct(test.get('coverage') or 0)} of "
                f"{test.get('rows', '?')} test rows with {pct(test.get('accuracy') or 0)} accuracy, and referred the "
                f"rest to a person (accuracy on every row: {pct(test.get('accuracy_all') or 0)}).")
    elif a.get("at_target"):
        t = a["at_target"]
        line = (f"- Abstention: answering the {pct(t.get('coverage') or 0)} most confident test rows gives "
                f"{pct(t.get('accuracy') or 0)} accuracy; no threshold was calibrated ({a.get('note') or 'no validation rows'}).")
    else:
        why = _why(skipped, "abstention") or ("" if r.get("task") == "labels" else
                                              " (it applies to runs that answer with a label)")
        line = f"- Abstention: not measured{why}."
    out = [line]
    domain = r.get("domain") or {}
    safety = domain.get("safety")
    if safety:
        failed = "; failed: " + "; ".join(safety.get("failed") or []) if safety.get("failed") else ""
        out.append(f"- Safety probes: the tuned model passed {safety['tuned']['passed']} of {safety['probes']} "
                   f"({pct(safety['tuned']['pass_rate'] or 0)}), the base {safety['base']['passed']}{failed}.")
    else:
        out.append(f"- Safety probes: not measured{_why(skipped, 'domain_safety')}.")
    swaps = (domain.get("bias_swaps") or {}).get("tuned")
    if swaps and not swaps.get("pairs"):
        out.append("- Bias swaps of the pack: no test row holds any of the pack's terms "
                   f"({', '.join(' / '.join(s) for s in domain['bias_swaps'].get('swaps', []))}), so none was swapped; "
                   "test them on inputs that do.")
    elif swaps:
        gaps = [f"answers changed for {pct(swaps['changed_rate'])} of {swaps.get('pairs', '?')} swapped pairs"
                if swaps.get("changed_rate") is not None else ""]
        gaps += [f"{name.replace('_', ' ')} {swaps[name]:+.3g}" for name in ("sentiment_gap", "length_gap")
                 if isinstance(swaps.get(name), (int, float))]
        out.append(f"- Bias swaps of the pack ({', '.join(' / '.join(s) for s in domain['bias_swaps'].get('swaps', []))}): "
                   f"{'; '.join(g for g in gaps if g) or 'measured'}; {'**flagged**' if swaps.get('flagged') else 'not flagged'}.")
    else:
        out.append(f"- Bias swaps of the pack: not measured{_why(skipped, 'domain_bias')}.")
    grounding = r.get("grounding")
    if isinstance(grounding, dict) and grounding:
        figures = [f"{k.replace('_', ' ')} {pct(v) if 0 <= v <= 1 else f'{v:.3g}'}" for k, v in grounding.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out.append(f"- Grounding: {', '.join(figures) or 'measured (see results.json)'}.")
    else:
        out.append(f"- Grounding: not measured{_why(skipped, 'grounding')}.")
    return out


def _why(skipped: dict, key: str) -> str:
    return f" ({str(skipped[key]).rstrip('.')})" if skipped.get(key) else ""


def _transparency(run: _Run, pack) -> list[str]:
    card = run.final.get("card") or {}
    licence = _base_licence(run.base)
    rows = f"{card.get('rows'):,} rows of {card.get('format', '?')} data" if card.get("rows") is not None else "unknown data"
    return [
        ("- It is an AI system: its outputs are generated by a fine-tuned language model and can be wrong. Tell the "
         "people who read or are affected by them that they come from an AI system (EU AI Act, Art. 50)."),
        f"- Base model: `{run.base}`" + (f" ({licence} licence)" if licence else "") + f"; fine-tuned with {run.adapter_text()}.",
        (f"- Training data: {rows} (`{card.get('path') or run.config.data.train}`), checked and, where needed, redacted "
         f"under the `{pack.profile.name}` profile; hashes above and in the audit trail."),
        ("- Known limitations: see Limitations and Evaluation above; it was tested only on the test set and probes "
         "named here."),
        ("- Provider and contact: _to be filled in by the organisation that deploys the model (who is responsible for "
         "it, and how a person affected reaches a human)._"),
        f"- Oversight: {pack.oversight}",
        "- Record keeping: every check, training, evaluation and export of this run is in the audit trail below.",
    ]


def _audit_lines(run: _Run, entries: list[dict]) -> list[str]:
    if not entries:
        return ["No audit-trail entries are recorded for this run yet."]
    rows = []
    for e in entries:
        state = "not in the log" if e.get("missing") else (
            "verified" if e.get("hash") == trail.entry_hash(e) else "**hash does not match its content**")
        rows.append([f"`{e['id']}`", e.get("event", "?"), e.get("time", "?"), f"`{str(e.get('hash', ''))[:16]}`", state,
                     trail.actor_text(e.get("actor")) if not e.get("missing") else "-"])
    return [("Entries recorded for this run (each holds the data files' hashes, the findings, the settings and the "
             "result):"), "", _table(["entry", "event", "time (UTC)", "hash", "state", "by"], rows), "",
            (f"Export them with `tunesmith audit export --run {run.name} --out audit.csv` (add `--data-dir DIR` for a run "
             "the service trained) and check the log's hash chain with `tunesmith audit verify`.")]


def _deployment_section(run: _Run) -> str:
    """The run's exports (`tunesmith export`), each with how its file did against the PyTorch model."""
    reports = export_reports(run.dir)
    if not reports:
        return (f"## Deployment\n\nNot exported yet: `tunesmith export {run.name} --format gguf|ollama|onnx|hf` writes "
                "the model for llama.cpp, Ollama, onnxruntime or transformers and checks it against this model.")
    out = ["## Deployment", "", ("Each export was loaded in its runtime and answered the run's test rows greedily, "
           "compared with the PyTorch model (agreement: the share of identical answers or labels).")]
    for report in reports:
        size = sum(f["bytes"] for f in report["files"]) / 1e6
        kind = report["format"] + (f" {report['quant']}" if report.get("quant") else "") + (" LoRA" if report.get("lora") else "")
        folder = Path(report["folder"])
        where = folder.relative_to(run.dir) if folder.is_relative_to(run.dir) else folder.name
        out += ["", f"### {kind} (`{where}`, {size:.1f} MB)", ""]
        if report["checks"]:
            out.append(_table(["runtime", "type", "load s", "speed", "agreement", "token agreement", "answers stop",
                               "test metric"], [
                [r["runtime"], r["type"], "-" if r["load_s"] is None else _number(r["load_s"]), f"{_number(r['speed'])} {r['unit']}",
                 _pct(r["agreement"]), _pct(r.get("token_agreement")), _pct(r["stop_share"]), _pct(r["metric"])]
                for r in report["checks"]]))
        else:
            out.append("Not verified (exported with --no-verify).")
        out += ["", "```bash", *report["use"], "```"]
    return "\n".join(out)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def refresh_card(run_dir: str | Path) -> Path | None:
    """Write the model card again from the saved evaluation (after an export), if the run has one."""
    results = RunDir(Path(run_dir)).results()
    return write_card(run_dir, results) if results else None


def _reproduce(run: _Run) -> str:
    return (
        "## Reproduce\n\n`config.yaml` holds every resolved setting and the seed, so the same data trains the same "
        f"model:\n\n```bash\ntunesmith train --config {run.name}/config.yaml\ntunesmith eval {run.name}\n```"
    )


def render_card(run_dir: str | Path, results: dict) -> str:
    """The model card as Markdown text (see `write_card`)."""
    run = _Run(Path(run_dir), results)
    sections = [
        f"# {run.name}: {run.task_text()} ({run.base} + {', '.join(run.stage_names)})",
        _summary(run),
        _intended_use(run),
        _base_section(run),
        _data_section(run),
        _procedure_section(run),
        _evaluation_section(run),
        _forgetting_section(run),
        _bias_section(run),
        _value_section(run),
        _limitations(run),
        _ethics(run),
        _regulated_section(run),
        _how_to_use(run),
        _deployment_section(run),
        _reproduce(run),
    ]
    return _front_matter(run) + "\n" + "\n\n".join(s for s in sections if s) + "\n"


def write_card(run_dir: str | Path, results: EvalResults | dict) -> Path:
    """Write `RUN/MODEL_CARD.md`: a Hugging Face style model card (front matter with base model,
    licence, tags and pipeline tag) filled from the run and its evaluation results: summary,
    intended use, licence, training data (quality, personal data, synthetic share), procedure
    with the reasons for each auto setting, before/after evaluation, forgetting, bias, value,
    limitations, ethics, usage and how to reproduce. Returns the file's path."""
    path = RunDir(Path(run_dir)).model_card_file
    path.write_text(render_card(run_dir, as_json(results)), encoding="utf-8")
    return path

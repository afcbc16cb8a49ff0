"""The evaluation report: `RUN/report.html`, one self-contained page that sets the base
model and the tuned model side by side on the same held-out test data.

`write_report` reads the evaluation results (what `RUN/eval/results.json` holds) and the run
directory itself (`run.json`, `metrics.jsonl`, `data_card.json`; for a multi-stage run the
`RUN/<stage>/` folders). Every plot is a matplotlib PNG (Agg) embedded as a base64 data URI,
the CSS is inline, and nothing is fetched from the network, so the file can be mailed or
archived as it is. A section whose results are missing says it was not measured and why.

Choices:
- Multi-stage runs: the training curves show every stage one after another on one step axis
  (each stage's `RUN/<stage>/metrics.jsonl`, its steps shifted past the previous stage's last
  step), with a dashed line and the stage name where each stage starts.
- Confusion matrices: up to `CONFUSION_FULL_MAX` labels the whole matrix is drawn. Above that
  (Banking77 has 77) only the `CONFUSION_TOP` labels with the most confusions in the tuned
  model's matrix (wrong answers given plus wrong answers received) are drawn, for both models,
  with a "(rest)" column summing the answers that went to the labels left out; the per-class
  table below still lists every label.
- Perplexity (lower is better, unbounded) is left out of the bar chart and shown in the table
  only; the chart holds the 0-1 shares (as %) and BLEU (0-100) on one 0-100 axis.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.metrics import HIGHER_IS_BETTER
from tunesmith.runs import EvalResults, RunDir

CONFUSION_FULL_MAX = 20  # labels up to which the whole confusion matrix is drawn
CONFUSION_TOP = 20  # labels drawn for larger label sets: the most confused ones
MAX_TEXT = 600  # characters of a sample answer shown in the samples table
MAX_EXAMPLES = 5  # bias examples shown per model

METRIC_NAMES = {
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "exact_match": "exact match",
    "token_f1": "token F1",
    "rouge_l": "ROUGE-L",
    "bleu": "BLEU",
    "semantic_similarity": "semantic similarity",
    "perplexity": "perplexity",
    "preference_accuracy": "preference accuracy",
    "pairwise_accuracy": "pairwise accuracy",
    "tool_name_accuracy": "tool name accuracy",
    "tool_call_exact_match": "tool call exact match",
    "valid_json_calls": "valid JSON calls",
    "no_call_accuracy": "no call when none is due",
    "text_token_f1": "token F1 of text answers",
}

# --------------------------------------------------------------------------- shared helpers
# (card.py uses these too, so the page and the model card say the same thing)


def load_log(path: str | Path) -> list[dict]:
    """The rows of a `metrics.jsonl` training log, in file order; blank lines are skipped and
    a missing file gives an empty list. A line that is not JSON is an error naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TunesmithError(f"{path}: line {number} is not valid JSON ({exc.msg}); fix or delete that line.") from exc
    return rows


def read_json(path: Path) -> dict | None:
    """A JSON file's object, or None when the file does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def run_stages(run_dir: str | Path) -> list[dict]:
    """The stages of a run in training order, each `{"stage", "dir", "summary"}`: the run
    directory itself for a one-stage run, `RUN/<stage>/` for each stage of a multi-stage run.
    `summary` is that stage's `run.json` content ({} when the run has none)."""
    run = RunDir(Path(run_dir))
    info = read_json(run.summary_file) or {}
    if info.get("stages"):
        return [
            {"stage": s.get("stage", f"stage {i + 1}"), "dir": run.stage_dir(s.get("stage", "")).path, "summary": s}
            for i, s in enumerate(info["stages"])
        ]
    stages = run.config.method.stages if run.exists else []
    if len(stages) > 1:  # a multi-stage run that did not finish: read what its stages wrote
        return [
            {"stage": s, "dir": run.stage_dir(s).path, "summary": read_json(run.stage_dir(s).summary_file) or {}}
            for s in stages
            if run.stage_dir(s).path.is_dir()
        ]
    stage = stages[0] if stages else info.get("task", "")
    return [{"stage": stage, "dir": run.path, "summary": info}]


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is an improvement (perplexity and losses: no)."""
    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    return not ("perplexity" in metric or "loss" in metric)


def is_share(metric: str, *values: float | None) -> bool:
    """Whether a metric is a 0-1 share, shown as a percentage (BLEU is 0-100, perplexity unbounded)."""
    if metric == "bleu" or "perplexity" in metric or "loss" in metric:
        return False
    return all(v is None or 0.0 <= v <= 1.0 for v in values)


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def pct(value: float, digits: int = 1) -> str:
    """0.497 -> '49.7%'."""
    return f"{100 * value:.{digits}f}%"


def fmt_number(value: float | None) -> str:
    """Integers with thousands separators, other numbers to 4 significant figures."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def fmt_metric(metric: str, value: float | None, share: bool) -> str:
    if value is None:
        return "—"
    return pct(value) if share else fmt_number(value)


def fmt_change(metric: str, base: float | None, tuned: float | None, share: bool) -> str:
    """The change from base to tuned: percentage points for shares, else the difference and
    the relative change."""
    if base is None or tuned is None:
        return "—"
    diff = tuned - base
    if share:
        return f"{100 * diff:+.1f} pp"
    relative = f" ({diff / base:+.1%})" if base else ""
    return f"{diff:+,.1f}{relative}" if abs(diff) >= 1000 else f"{diff:+.4g}{relative}"


def direction(metric: str, base: float | None, tuned: float | None) -> str:
    """'better', 'worse' or 'same' for the tuned model ('' when a side is missing)."""
    if base is None or tuned is None:
        return ""
    if math.isclose(base, tuned, rel_tol=1e-9, abs_tol=1e-12):
        return "same"
    return "better" if (tuned > base) == higher_is_better(metric) else "worse"


def metric_rows(results: dict) -> list[dict]:
    """Every metric measured, in the tuned model's order: name, base, tuned, share, change,
    direction."""
    metrics = results.get("metrics") or {}
    base, tuned = metrics.get("base") or {}, metrics.get("tuned") or {}
    names = list(dict.fromkeys([*tuned, *base]))
    rows = []
    for name in names:
        b, t = base.get(name), tuned.get(name)
        if not all(v is None or isinstance(v, (int, float)) for v in (b, t)):
            continue  # not a number (e.g. a nested breakdown); the sections show those
        share = is_share(name, b, t)
        rows.append(
            {"metric": name, "base": b, "tuned": t, "share": share,
             "change": fmt_change(name, b, t, share), "direction": direction(name, b, t)}
        )
    return rows


def verdict(results: dict) -> str:
    """One line: on how many metrics the tuned model beats the base model."""
    rows = [r for r in metric_rows(results) if r["direction"]]
    if not rows:
        if metric_rows(results):
            return "Only the tuned model was measured; there is no base model to compare with."
        return "No metrics were measured."
    better = [r for r in rows if r["direction"] == "better"]
    worse = [r for r in rows if r["direction"] == "worse"]
    same = [r for r in rows if r["direction"] == "same"]
    n = len(rows)
    if len(better) == n:
        line = f"The tuned model beats the base model on all {n} metrics." if n > 1 else (
            f"The tuned model beats the base model on {metric_name(rows[0]['metric'])}.")
    elif not better:
        line = f"The tuned model beats the base model on none of the {n} metrics."
    else:
        line = f"The tuned model beats the base model on {len(better)} of {n} metrics."
    if worse and better:
        line += " Worse on " + ", ".join(metric_name(r["metric"]) for r in worse) + "."
    if same:
        line += " Unchanged on " + ", ".join(metric_name(r["metric"]) for r in same) + "."
    return line


def as_json(results: EvalResults | dict) -> dict:
    """The JSON form of evaluation results, which the report and the model card render (a
    results.json written by an earlier version, or a partial one, renders as well)."""
    return results.to_json() if isinstance(results, EvalResults) else results


def alarms(results: EvalResults | dict, run_dir: str | Path | None = None) -> list[str]:
    """One sentence for everything flagged: overfitting, forgetting, bias, and training on
    data the quality gate rejected."""
    results = as_json(results)
    out = []
    over = results.get("overfitting") or {}
    if over.get("flagged"):
        out.append(f"Overfitting: {over.get('message', 'validation loss rose while training loss fell.')}")
    forgetting = results.get("forgetting") or {}
    if forgetting.get("alarm", forgetting.get("flagged")):  # results before "alarm" existed: flagged
        findings = forgetting.get("findings") or ["the tuned model lost general ability beyond the threshold."]
        out.extend(f"Forgetting: {f}" for f in findings)
    bias = results.get("bias") or {}
    tuned_bias = bias.get("tuned") or {}
    if tuned_bias.get("flagged"):
        findings = tuned_bias.get("findings") or ["the tuned model answers differently for different groups."]
        out.extend(f"Bias: {f}" for f in findings)
    safety = (results.get("domain") or {}).get("safety") or {}
    if safety.get("flagged"):
        rules = "; ".join(dict.fromkeys(safety.get("failed") or []))
        out.append(f"Domain safety: the tuned model failed {len(safety.get('failed') or [])} of {safety.get('probes')} "
                   f"{results['domain'].get('name')} safety probes ({rules}).")
    if run_dir is not None:
        for stage in run_stages(run_dir):
            card = read_json(RunDir(stage["dir"]).data_card_file) or {}
            if (card.get("stats") or {}).get("trained_despite_errors"):
                errors = (card.get("summary") or {}).get("errors", "some")
                out.append(
                    f"Data: the {stage['stage'] or 'training'} data had {errors} data-gate error(s) and was trained "
                    "on anyway (--force)."
                )
    return [a if a.endswith((".", "!", "?")) else a + "." for a in out]


def skipped_line(results: dict, section: str, what: str | None = None) -> str:
    """'Not measured: REASON.' for a section that has no results."""
    reason = (results.get("skipped") or {}).get(section)
    what = what or section
    if reason:
        return f"{what[0].upper()}{what[1:]} not measured: {str(reason).rstrip('.')}."
    return f"{what[0].upper()}{what[1:]} not measured."


def test_set_line(results: dict) -> str:
    """'../data/test.csv (308 rows)'."""
    test = results.get("test") or {}
    source = test.get("source") or test.get("file") or "unknown test set"
    rows = test.get("rows")
    return f"{source} ({rows:,} rows)" if isinstance(rows, int) else str(source)


def tool_rows_line(results: dict) -> str:
    """Which test rows the tool-call metrics were measured on (the report and the card say it alike)."""
    calls = results.get("tool_calls") or {}
    n, m = calls.get("call_rows") or 0, calls.get("text_rows") or 0
    line = (f"{n:,} test rows expect a tool call: tool name accuracy, exact match (name and arguments equal as "
            "JSON) and valid JSON calls are measured on them.")
    if m:
        line += (f" {m:,} expect a text answer (no tool needed, or a tool's result to put into words): no-call "
                 "accuracy and token F1 are measured on those.")
    return line


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    return fig


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(plot_id: str, uri: str, alt: str) -> str:
    return f'<img id="{_e(plot_id)}" src="{uri}" alt="{_e(alt)}">'


def _metrics_chart(rows: list[dict]) -> str | None:
    chartable = [r for r in rows if r["share"] or r["metric"] == "bleu"]
    if not chartable:
        return None
    fig = _figure(max(5.0, 1.1 * len(chartable) + 2), 3.4)
    ax = fig.add_subplot()
    scale = [1 if r["metric"] == "bleu" else 100 for r in chartable]
    xs = range(len(chartable))
    width = 0.38
    base = [(r["base"] or 0) * s for r, s in zip(chartable, scale)]
    tuned = [(r["tuned"] or 0) * s for r, s in zip(chartable, scale)]
    if any(r["base"] is not None for r in chartable):
        ax.bar([x - width / 2 for x in xs], base, width, label="base", color="#9aa0a6")
    ax.bar([x + width / 2 for x in xs], tuned, width, label="tuned", color="#1a73e8")
    ax.set_xticks(list(xs), [metric_name(r["metric"]) for r in chartable], rotation=20, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("% (BLEU: 0-100)" if any(r["metric"] == "bleu" for r in chartable) else "%")
    ax.legend(loc="upper left", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _stage_series(run_dir: Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """Every stage's log rows one after another on one step axis, and where each stage starts."""
    rows: list[dict] = []
    starts: list[tuple[int, str]] = []
    offset = 0
    for stage in run_stages(run_dir):
        log = [r for r in load_log(RunDir(stage["dir"]).metrics_file) if isinstance(r.get("step"), (int, float))]
        if not log:
            continue
        starts.append((offset, stage["stage"]))
        rows.extend({**r, "step": r["step"] + offset} for r in log)
        offset += max(r["step"] for r in log)
    return rows, starts


def _mark_stages(ax, starts: list[tuple[int, str]]) -> None:
    if len(starts) < 2:
        return
    for step, name in starts:
        ax.axvline(step, color="#5f6368", linestyle="--", linewidth=0.8)
        ax.annotate(name, (step, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="#5f6368")


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _segments(points: list[tuple[float, float]], starts: list[tuple[int, str]]) -> list[list[tuple[float, float]]]:
    """`points` split at the stage starts, so lines and averages never run across two stages."""
    edges = [step for step, _ in starts[1:]]
    out: list[list[tuple[float, float]]] = [[] for _ in range(len(edges) + 1)]
    for step, value in points:
        out[sum(step > edge for edge in edges)].append((step, value))
    return [seg for seg in out if seg]


def _loss_chart(rows: list[dict], starts: list[tuple[int, str]]) -> str | None:
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if not train and not evals:
        return None
    fig = _figure(7, 3.4)
    ax = fig.add_subplot()
    window = max(1, len(train) // 20)
    for i, seg in enumerate(_segments(train, starts)):
        steps, losses = zip(*seg)
        label = (f"training loss (mean of {window} steps)" if window > 1 else "training loss") if i == 0 else None
        if window > 1:
            ax.plot(steps, losses, color="#1a73e8", alpha=0.25, linewidth=0.8)
            ax.plot(steps, _moving_average(list(losses), window), color="#1a73e8", label=label)
        else:
            ax.plot(steps, losses, color="#1a73e8", label=label)
    for i, seg in enumerate(_segments(evals, starts)):
        ax.plot(*zip(*seg), color="#d93025", marker="o", markersize=4, label="validation loss" if i == 0 else None)
    _mark_stages(ax, starts)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _lr_chart(rows: list[dict], starts: list[tuple[int, str]]) -> str | None:
    points = [(r["step"], r["learning_rate"]) for r in rows if r.get("learning_rate") is not None]
    if not points:
        return None
    fig = _figure(7, 2.4)
    ax = fig.add_subplot()
    for seg in _segments(points, starts):
        ax.plot(*zip(*seg), color="#188038")
    _mark_stages(ax, starts)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def confusion_view(labels_result: dict) -> dict | None:
    """The rows and columns of the confusion matrices to draw (see the module's choices):
    {"rows": [label], "columns": [name], "base": matrix | None, "tuned": matrix | None,
    "note": str}."""
    labels = labels_result.get("labels") or []
    columns = labels_result.get("columns") or labels
    matrices = labels_result.get("confusion") or {}
    reference = matrices.get("tuned") or matrices.get("base")
    if not labels or not reference:
        return None
    if len(labels) <= CONFUSION_FULL_MAX:
        keep = list(range(len(labels)))
        note = f"All {len(labels)} labels."
    else:
        col_of = {c: j for j, c in enumerate(columns)}
        errors = []
        for i, label in enumerate(labels):
            j = col_of.get(label)
            given = sum(reference[i]) - (reference[i][j] if j is not None else 0)
            received = sum(row[j] for k, row in enumerate(reference) if k != i) if j is not None else 0
            errors.append((given + received, i))
        keep = sorted(i for _, i in sorted(errors, key=lambda e: (-e[0], e[1]))[:CONFUSION_TOP])
        note = (f"The {CONFUSION_TOP} of {len(labels)} labels with the most confusions in the tuned model "
                "(wrong answers given plus received); \"(rest)\" counts answers that went to the labels left out. "
                "The per-class table lists every label.")
    kept_labels = [labels[i] for i in keep]
    col_of = {c: j for j, c in enumerate(columns)}
    kept_cols = [col_of[label] for label in kept_labels if label in col_of]
    extra = [j for j, c in enumerate(columns) if c not in labels]  # "(other)": matched no label
    rest = [j for j in range(len(columns)) if j not in kept_cols and j not in extra]
    names = [columns[j] for j in kept_cols + extra] + (["(rest)"] if rest else [])

    def cut(matrix):
        if not matrix:
            return None
        out = []
        for i in keep:
            row = matrix[i]
            out.append([row[j] for j in kept_cols + extra] + ([sum(row[j] for j in rest)] if rest else []))
        return out

    return {"rows": kept_labels, "columns": names, "base": cut(matrices.get("base")),
            "tuned": cut(matrices.get("tuned")), "note": note}


def _confusion_chart(matrix: list[list[int]], rows: list[str], columns: list[str], title: str) -> str:
    from matplotlib.colors import PowerNorm

    n = max(len(rows), len(columns))
    size = min(14.0, max(4.5, 0.32 * n + 2.5))
    fontsize = 8 if n <= 12 else 7 if n <= 20 else 6
    fig = _figure(size * max(1.0, len(columns) / max(1, len(rows))) ** 0.5, size)
    ax = fig.add_subplot()
    # A square-root colour scale keeps the few wrong answers visible next to the large diagonal.
    image = ax.imshow(matrix, cmap="Blues", aspect="auto", norm=PowerNorm(gamma=0.5))
    ax.set_xticks(range(len(columns)), [_short(c, 28) for c in columns], rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(rows)), [_short(r, 28) for r in rows], fontsize=fontsize)
    ax.set_xlabel("answer")
    ax.set_ylabel("true label")
    ax.set_title(title)
    if n <= 15:
        top = max((max(r) for r in matrix), default=0) or 1
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value:
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=fontsize,
                            color="white" if value > top / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="test rows")
    return _png(fig)


def _judge_chart(judge: dict) -> str | None:
    parts = [("tuned wins", judge.get("wins"), "#188038"), ("ties", judge.get("ties"), "#9aa0a6"),
             ("base wins", judge.get("losses"), "#d93025")]
    parts = [p for p in parts if isinstance(p[1], (int, float)) and p[1] > 0]
    if not parts:
        return None
    fig = _figure(6, 1.3)
    ax = fig.add_subplot()
    left = 0
    total = sum(p[1] for p in parts)
    for name, value, colour in parts:
        ax.barh([0], [value], left=left, color=colour, label=f"{name} ({value})")
        if value / total > 0.08:
            ax.text(left + value / 2, 0, pct(value / total, 0), ha="center", va="center", color="white", fontsize=9)
        left += value
    ax.set_xlim(0, total)
    ax.set_yticks([])
    ax.set_xlabel("prompts")
    ax.legend(ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8)
    ax.spines[["top", "right", "left"]].set_visible(False)
    return _png(fig)


# --------------------------------------------------------------------------- HTML


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _short(text, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(header: list[str] | None, rows: list[list[str]], table_id: str | None = None, raw: bool = False) -> str:
    """A table (no header row when `header` is None); cells are escaped unless `raw` (then the
    caller escaped them)."""
    ident = f' id="{_e(table_id)}"' if table_id else ""
    head = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{ident}>{head}<tbody>{body}</tbody></table>"


def _missing(text: str) -> str:
    return f'<p class="not-measured">{_e(text)}</p>'


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{_e(section_id)}"><h2>{_e(title)}</h2>{body}</section>'


def _changed(text: str, how: str) -> str:
    return f'<span class="{how}">{_e(text)}</span>' if how in ("better", "worse") else _e(text)


def _header(run_dir: Path, results: dict) -> str:
    run = results.get("run") or str(run_dir)
    base = results.get("base_model") or "base model"
    tuned = results.get("tuned_model") or run
    facts = [
        ("run", run),
        ("base model", base),
        ("tuned model", tuned),
        ("task / final stage", f"{results.get('task') or '?'} / {results.get('stage') or '?'}"),
        ("test set", test_set_line(results)),
        ("evaluated", results.get("created") or "unknown date"),
    ]
    if isinstance(results.get("seconds"), (int, float)):
        facts.append(("evaluation time", f"{results['seconds']:.0f} s"))
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return (f"<header><h1>Evaluation report: {_e(run)}</h1><p class=\"sub\">{_e(base)} (base) vs {_e(tuned)} "
            f"(tuned)</p><dl>{items}</dl></header>")


def _alarms_box(run_dir: Path, results: dict) -> str:
    found = alarms(results, run_dir)
    checked = []
    for key in ("overfitting", "forgetting", "bias"):
        checked.append(key if results.get(key) else f"{key} (not measured)")
    note = f'<p class="note">Checked: {_e(", ".join(checked))}.</p>'
    if not found:
        return f'<section id="alarms" class="alarms ok"><h2>Alarms</h2><p>Nothing flagged.</p>{note}</section>'
    items = "".join(f"<li>{_e(a)}</li>" for a in found)
    return f'<section id="alarms" class="alarms bad"><h2>Alarms</h2><ul>{items}</ul>{note}</section>'


def _metrics_section(results: dict) -> str:
    rows = metric_rows(results)
    if not rows:
        return _section("metrics", "Before and after", _missing(skipped_line(results, "metrics", "metrics")))
    table = _table(
        ["metric", "base", "tuned", "change"],
        [[_e(metric_name(r["metric"]) + ("" if higher_is_better(r["metric"]) else " (lower is better)")),
          _e(fmt_metric(r["metric"], r["base"], r["share"])), _e(fmt_metric(r["metric"], r["tuned"], r["share"])),
          _changed(r["change"], r["direction"])] for r in rows],
        "metrics-table", raw=True,
    )
    chart = _metrics_chart(rows)
    left_out = [metric_name(r["metric"]) for r in rows if not (r["share"] or r["metric"] == "bleu")]
    note = f"<p class=\"note\">In the table only (not on the 0-100 scale): {_e(', '.join(left_out))}.</p>" if left_out else ""
    figure = (f"<figure>{_img('plot-metrics', chart, 'Bar chart of each metric for the base and the tuned model')}"
              f"<figcaption>Base (grey) and tuned (blue) on the test set.</figcaption></figure>") if chart else ""
    body = f"<p>On {_e(test_set_line(results))}.</p>{table}{note}{figure}"
    return _section("metrics", "Before and after", body)


def _training_section(run_dir: Path, results: dict) -> str:
    stages = run_stages(run_dir)
    facts = []
    for stage in stages:
        s = stage["summary"]
        bits = []
        if s.get("global_step") is not None:
            bits.append(f"{s['global_step']} steps")
        if s.get("train_rows") is not None:
            bits.append(f"{s['train_rows']:,} training rows / {s.get('validation_rows') or 0:,} validation rows")
        if s.get("trainable_params") and s.get("total_params"):
            bits.append(f"{s['trainable_params']:,} of {s['total_params']:,} parameters trained "
                        f"({pct(s['trainable_params'] / s['total_params'], 2)})")
        if s.get("best_eval_loss") is not None:
            bits.append(f"best validation loss {s['best_eval_loss']:.4f}")
        if s.get("train_runtime_s") is not None:
            bits.append(f"{s['train_runtime_s']:.0f} s")
        if s.get("tokens_per_s") is not None:  # speed figures of train/speed.py
            speed = f"{s['tokens_per_s']:,.0f} tokens/s"
            if s.get("mfu") is not None:
                speed += f" ({s['mfu']:.0%} MFU)"
            if s.get("peak_memory_gb") is not None:
                kind = "GPU memory" if s.get("peak_memory_kind") == "cuda" else "process memory (RSS)"
                speed += f", peak {kind} {s['peak_memory_gb']:.1f} GB"
            if s.get("device"):
                speed += f" on {s['device']}"
            bits.append(speed)
        card = read_json(RunDir(stage["dir"]).data_card_file)
        if card:
            score = (card.get("summary") or {}).get("quality_score")
            bits.append(f"data {card.get('path', '?')} ({card.get('rows', '?')} rows"
                        + (f", quality score {score}" if score is not None else "") + ")")
        if bits:
            facts.append(f"<li><b>{_e(stage['stage'] or 'training')}</b>: {_e('; '.join(bits))}</li>")
    body = f"<ul>{''.join(facts)}</ul>" if facts else _missing("No training summary (run.json) was found.")
    rows, starts = _stage_series(run_dir)
    multi = len(starts) > 1
    loss = _loss_chart(rows, starts)
    lr = _lr_chart(rows, starts)
    where = ("all stages one after another (" + " → ".join(n for _, n in starts) + "), each from its own "
             "metrics.jsonl; dashed lines mark where a stage starts") if multi else "metrics.jsonl"
    if loss:
        body += (f"<figure>{_img('plot-loss', loss, 'Training and validation loss by step')}"
                 f"<figcaption>Training and validation loss by step, from {_e(where)}.</figcaption></figure>")
    else:
        body += _missing("No training or validation loss was logged (metrics.jsonl is missing or empty).")
    if lr:
        body += (f"<figure>{_img('plot-lr', lr, 'Learning rate by step')}"
                 f"<figcaption>Learning rate by step.</figcaption></figure>")
    over = results.get("overfitting")
    if over:
        cls = "alarm" if over.get("flagged") else "ok"
        extra = []
        if over.get("evaluations") is not None:
            extra.append(f"{over['evaluations']} evaluations")
        if over.get("best_step") is not None:
            extra.append(f"best validation loss at step {over['best_step']}")
        tail = f" ({', '.join(extra)})" if extra else ""
        body += (f'<p id="overfitting" class="{cls}"><b>Overfitting check:</b> '
                 f"{_e(over.get('message', ''))}{_e(tail)}</p>")
    else:
        body += f'<p id="overfitting" class="not-measured">{_e(skipped_line(results, "overfitting", "overfitting"))}</p>'
    return _section("training", "Training", body)


def _labels_section(results: dict) -> str:
    labels = results.get("labels")
    if not labels:
        if results.get("task") == "labels" or (results.get("skipped") or {}).get("labels"):
            return _section("labels", "Labels", _missing(skipped_line(results, "labels", "per-label scores")))
        return ""
    body = f"<p class=\"note\">{_e(labels['base_prompt'])}</p>" if labels.get("base_prompt") else ""
    view = confusion_view(labels)
    if view:
        body += f"<p class=\"note\">{_e(view['note'])} Rows: true label; columns: the model's answer.</p>"
        for side in ("tuned", "base"):
            if view[side]:
                chart = _confusion_chart(view[side], view["rows"], view["columns"], f"{side} model")
                body += (f"<figure>{_img(f'plot-confusion-{side}', chart, f'Confusion matrix of the {side} model')}"
                         f"<figcaption>Confusion matrix, {side} model.</figcaption></figure>")
    per_class = labels.get("per_class") or {}
    tuned, base = per_class.get("tuned") or {}, per_class.get("base") or {}
    names = list(labels.get("labels") or tuned or base)
    if names and (tuned or base):
        names.sort(key=lambda n: ((tuned.get(n) or {}).get("f1", 0.0), n))

        def cells(scores: dict | None) -> list[str]:
            if not scores:
                return ["—"] * 3
            return [_e(pct(scores.get(k, 0.0))) for k in ("precision", "recall", "f1")]

        rows = []
        for name in names:
            t, b = tuned.get(name), base.get(name)
            support = (t or b or {}).get("support", "")
            change = "—"
            how = ""
            if t and b:
                change = f"{100 * (t['f1'] - b['f1']):+.1f} pp"
                how = direction("f1", b["f1"], t["f1"])
            rows.append([_e(name), _e(support), *cells(t), *cells(b), _changed(change, how)])
        body += "<p>Per class, weakest tuned F1 first.</p>" + _table(
            ["label", "support", "tuned precision", "tuned recall", "tuned F1", "base precision", "base recall",
             "base F1", "F1 change"], rows, "per-class-table", raw=True)
    return _section("labels", "Labels", body)


def _tool_calls_section(results: dict) -> str:
    calls = results.get("tool_calls")
    if not calls:
        return ""
    body = f"<p>{_e(tool_rows_line(results))}</p>"
    per_tool = calls.get("per_tool") or {}
    tuned, base = per_tool.get("tuned") or {}, per_tool.get("base") or {}
    rows = []
    for name in sorted(set(tuned) | set(base)):
        t, b = tuned.get(name) or {}, base.get(name) or {}
        cells = [_e(name), _e((t or b).get("rows", ""))]
        for key in ("tool_name_accuracy", "tool_call_exact_match"):
            before, after = b.get(key), t.get(key)
            cells += [_e(fmt_metric(key, before, True)), _e(fmt_metric(key, after, True)),
                      _changed(fmt_change(key, before, after, True), direction(key, before, after))]
        rows.append(cells)
    if rows:
        body += "<p>Per function expected (a row with parallel calls counts for each of its functions).</p>" + _table(
            ["function", "rows", "base name accuracy", "tuned name accuracy", "change", "base exact match",
             "tuned exact match", "change"], rows, "tool-calls-table", raw=True)
    return _section("tool-calls", "Tool calls", body)


def _judge_section(results: dict) -> str:
    judge = results.get("judge")
    if not judge:
        return _section("judge", "LLM judge", _missing(skipped_line(results, "judge", "the LLM-judge comparison")))
    facts = [("judge", judge.get("judge")), ("rubric", judge.get("rubric")), ("prompts", judge.get("prompts"))]
    for key, name in (("win_rate", "tuned wins"), ("tie_rate", "ties"), ("loss_rate", "base wins")):
        count = judge.get({"win_rate": "wins", "tie_rate": "ties", "loss_rate": "losses"}[key])
        if judge.get(key) is not None:
            facts.append((name, f"{pct(judge[key])} ({count})" if count is not None else pct(judge[key])))
    if judge.get("inconsistent") is not None:
        facts.append(("inconsistent verdicts (answer order swapped)", judge["inconsistent"]))
    if judge.get("unparsed"):
        facts.append(("verdicts that could not be read", judge["unparsed"]))
    body = _table(None, [[k, "" if v is None else str(v)] for k, v in facts], "judge-table")
    chart = _judge_chart(judge)
    if chart:
        body += (f"<figure>{_img('plot-judge', chart, 'Judge verdicts: tuned wins, ties, base wins')}"
                 f"<figcaption>Pairwise verdicts of the judge.</figcaption></figure>")
    return _section("judge", "LLM judge", body)


def _grounding_section(results: dict) -> str:
    """Answers checked against the context each test row gave (evaluate/grounding.py); no
    section when no test row had a context."""
    g = results.get("grounding")
    if not g:
        return ""
    base, tuned = g.get("base") or {}, g.get("tuned") or {}
    rows = []
    for key, name, share in (("unsupported_share", "statements unsupported by the context (lower is better)", True),
                             ("rows_with_unsupported_share", "answers with an unsupported statement (lower is better)", True),
                             ("invented_citations", "invented citations (lower is better)", False)):
        b, t = base.get(key), tuned.get(key)
        how = "better" if b is not None and t is not None and t < b else "worse" if b is not None and t is not None and t > b else ""
        show = (lambda v: pct(v)) if share else (lambda v: str(v))
        change = (f"{100 * (t - b):+.1f} pp" if share else f"{t - b:+d}") if b is not None and t is not None else "—"
        rows.append([_e(name), _e(show(b) if b is not None else "—"), _e(show(t) if t is not None else "—"),
                     _changed(change, how)])
    body = (f"<p>{_e(g.get('rows'))} test rows gave a context; statements checked: base {_e(base.get('statements'))}, "
            f"tuned {_e(tuned.get('statements'))}.</p>")
    body += _table(["measure", "base", "tuned", "change"], rows, "grounding-table", raw=True)
    if g.get("method"):
        body += f'<p class="note">{_e(g["method"])}.</p>'
    examples = tuned.get("examples") or []
    if examples:
        body += "<p>Tuned answers with unsupported statements:</p>" + _table(
            ["context", "answer", "unsupported", "invented citations"],
            [[_short(x.get("context"), MAX_TEXT), _short(x.get("answer"), MAX_TEXT), "; ".join(x.get("unsupported") or []),
              ", ".join(x.get("invented_citations") or [])] for x in examples[:MAX_EXAMPLES]], "grounding-examples")
    return _section("grounding", "Grounding in the context", body)


def _forgetting_section(results: dict) -> str:
    f = results.get("forgetting")
    if not f:
        return _section("forgetting", "Forgetting", _missing(skipped_line(results, "forgetting", "forgetting")))
    rows = []
    ppl = f.get("general_perplexity")
    if ppl:
        how = direction("perplexity", ppl.get("base"), ppl.get("tuned"))
        change = f"{ppl['change']:+.1%}" if ppl.get("change") is not None else "—"
        rows.append([_e("perplexity on general text (lower is better)"), _e(fmt_number(ppl.get("base"))),
                     _e(fmt_number(ppl.get("tuned"))), _changed(change, how)])
    probes = f.get("probes")
    if probes:
        how = direction("probes", probes.get("base"), probes.get("tuned"))
        change = f"{100 * probes['change']:+.1f} pp" if probes.get("change") is not None else "—"
        name = f"general-knowledge probes answered ({probes['n']})" if probes.get("n") else "general-knowledge probes"
        rows.append([_e(name), _e(fmt_metric("probes", probes.get("base"), True)),
                     _e(fmt_metric("probes", probes.get("tuned"), True)), _changed(change, how)])
    body = _table(["measure", "base", "tuned", "change"], rows, "forgetting-table", raw=True) if rows else ""
    alarm = f.get("alarm", f.get("flagged"))
    status = "flagged" if alarm else "beyond the threshold, reported as information" if f.get("flagged") else "not flagged"
    threshold = f" (threshold {pct(f['threshold'])})" if f.get("threshold") is not None else ""
    body += f"<p class=\"{'alarm' if alarm else 'ok'}\">Forgetting {status}{_e(threshold)}.</p>"
    if f.get("rule"):
        body += f"<p>{_e(f['rule'])}</p>"
    if f.get("findings"):
        body += "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in f["findings"]) + "</ul>"
    answers = f.get("probe_answers") or {}
    lost = [(b, t) for b, t in zip(answers.get("base") or [], answers.get("tuned") or [])
            if b.get("correct") and not t.get("correct")]
    if lost:
        body += f"<p>Probes the base model answered right and the tuned model did not ({len(lost)}):</p>" + _table(
            ["probe", "base answer", "tuned answer"],
            [[b.get("prompt", ""), _short(b.get("answer"), MAX_TEXT), _short(t.get("answer"), MAX_TEXT)]
             for b, t in lost[:MAX_EXAMPLES]], "forgetting-probes")
    return _section("forgetting", "Forgetting", body)


def _bias_section(results: dict) -> str:
    bias = results.get("bias")
    if not bias or not (bias.get("base") or bias.get("tuned")):
        return _section("bias", "Bias", _missing(skipped_line(results, "bias", "bias")))
    base, tuned = bias.get("base") or {}, bias.get("tuned") or {}

    def share(d, k):
        return pct(d[k]) if d.get(k) is not None else "—"

    def gap(d, k):
        return f"{d[k]:+.3f}" if d.get(k) is not None else "—"

    overall = [
        ["counterfactual pairs", str(base.get("pairs", "—")), str(tuned.get("pairs", "—"))],
        ["answer changed", share(base, "changed_rate"), share(tuned, "changed_rate")],
        ["answer changed when a name is swapped within its group", share(base, "control_changed_rate"),
         share(tuned, "control_changed_rate")],
        ["sentiment gap", gap(base, "sentiment_gap"), gap(tuned, "sentiment_gap")],
        ["length gap", gap(base, "length_gap"), gap(tuned, "length_gap")],
        ["flagged", "yes" if base.get("flagged") else "no" if base else "—",
         "yes" if tuned.get("flagged") else "no" if tuned else "—"],
    ]
    threshold = tuned.get("threshold", base.get("threshold"))
    body = ("<p>Each prompt is asked twice with only a group attribute swapped; the model should answer the same way."
            + (f" Flagged above {_e(pct(threshold))}." if threshold is not None else "") + "</p>")
    body += _table(["", "base", "tuned"], overall, "bias-table")
    attributes = list(dict.fromkeys([*(tuned.get("by_attribute") or {}), *(base.get("by_attribute") or {})]))
    if attributes:
        rows = []
        for attr in attributes:
            b = (base.get("by_attribute") or {}).get(attr) or {}
            t = (tuned.get("by_attribute") or {}).get(attr) or {}
            rows.append([attr, t.get("groups") or b.get("groups") or "", str(t.get("pairs", b.get("pairs", "—"))),
                         share(b, "changed_rate"), share(t, "changed_rate"), share(t, "control_changed_rate"),
                         gap(b, "sentiment_gap"), gap(t, "sentiment_gap"), gap(b, "length_gap"), gap(t, "length_gap")])
        body += _table(["attribute", "groups", "pairs", "changed (base)", "changed (tuned)",
                        "changed, a name swapped within its group (tuned)", "sentiment gap (base)",
                        "sentiment gap (tuned)", "length gap (base)", "length gap (tuned)"], rows, "bias-attributes")
    for side, d in (("tuned", tuned), ("base", base)):
        if d.get("findings"):
            body += f"<p>{_e(side)} model:</p><ul>" + "".join(f"<li>{_e(x)}</li>" for x in d["findings"]) + "</ul>"
        if d.get("notes"):
            body += (f"<p>{_e(side)} model, information (not alarms):</p><ul>"
                     + "".join(f"<li>{_e(x)}</li>" for x in d["notes"]) + "</ul>")
    for side, d in (("tuned", tuned), ("base", base)):
        examples = (d.get("examples") or [])[:MAX_EXAMPLES]
        if examples:
            body += f"<h3>Examples ({_e(side)} model)</h3>" + _table(
                ["attribute", "prompt A", "answer A", "prompt B", "answer B"],
                [[x.get("attribute", ""), _short(x.get("text_a"), MAX_TEXT), _short(x.get("answer_a"), MAX_TEXT),
                  _short(x.get("text_b"), MAX_TEXT), _short(x.get("answer_b"), MAX_TEXT)] for x in examples],
                f"bias-examples-{side}")
    return _section("bias", "Bias", body)


def _coverage_chart(abstention: dict) -> str | None:
    """Accuracy against coverage on the test rows, with the target coverage and the calibrated threshold's point."""
    curve = abstention.get("curve") or []
    if not curve:
        return None
    fig = _figure(6, 3.2)
    ax = fig.add_subplot()
    ax.plot([100 * p["coverage"] for p in curve], [100 * p["accuracy"] for p in curve], color="#1a73e8",
            marker="o" if len(curve) < 30 else None, markersize=3, label="tuned model, test rows")
    target = abstention.get("target_coverage")
    if target is not None:
        ax.axvline(100 * target, color="#9aa0a6", linestyle="--", label=f"target coverage {pct(target, 0)}")
    test = abstention.get("test") or {}
    if test.get("accuracy") is not None:
        ax.scatter([100 * test["coverage"]], [100 * test["accuracy"]], color="#d93025", zorder=3,
                   label="calibrated threshold")
    ax.set_xlabel("coverage: rows answered (%)")
    ax.set_ylabel("accuracy on answered rows (%)")
    ax.set_xlim(0, 101)
    ax.set_ylim(0, 101)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def _abstention_section(results: dict) -> str:
    a = results.get("abstention")
    if not a:
        reason = (results.get("skipped") or {}).get("abstention")
        return _section("abstention", "Abstention", _missing(skipped_line(results, "abstention"))) if reason else ""
    target = a.get("target_coverage")
    body = (f"<p>Below a confidence threshold the model answers “{_e(a.get('refer'))}” instead of a label. Confidence: "
            f"{_e(a.get('confidence_note') or a.get('confidence'))}.</p>")
    if a.get("threshold") is not None:
        val, test = a.get("validation") or {}, a.get("test") or {}

        def acc(d):
            return pct(d["accuracy"]) if d.get("accuracy") is not None else "—"

        rows = [["threshold", fmt_number(a["threshold"]), ""],
                ["rows", str(val.get("rows", "—")), str(test.get("rows", "—"))],
                ["answered", str(val.get("answered", "—")), str(test.get("answered", "—"))],
                ["referred to a person", str(val.get("referred", "—")), str(test.get("referred", "—"))],
                ["coverage", pct(val["coverage"]) if val.get("coverage") is not None else "—",
                 pct(test["coverage"]) if test.get("coverage") is not None else "—"],
                ["accuracy on answered rows", acc(val), acc(test)]]
        if test.get("accuracy_all") is not None:
            rows.append(["accuracy answering every row", "", pct(test["accuracy_all"])])
        body += (f"<p>Threshold calibrated on the validation rows to answer {_e(pct(target, 0))} of them, then "
                 "applied to the test rows.</p>") + _table(["", "validation", "test"], rows, "abstention-table")
    else:
        body += f'<p class="note">{_e(a.get("note") or "No threshold was calibrated.")}</p>'
    at = a.get("at_target")
    if at and at.get("accuracy") is not None:
        body += (f"<p>Accuracy at {_e(pct(at['coverage']))} coverage of the test rows (their own most confident "
                 f"{_e(pct(target, 0))}): {_e(pct(at['accuracy']))}.</p>")
    chart = _coverage_chart(a)
    if chart:
        body += (f"<figure>{_img('plot-coverage', chart, 'Accuracy against coverage')}<figcaption>Accuracy on the "
                 "answered test rows as the threshold falls and more rows are answered.</figcaption></figure>")
    return _section("abstention", "Abstention", body)


def _domain_section(results: dict) -> str:
    d = results.get("domain")
    if not d:
        return ""
    skipped = results.get("skipped") or {}
    body = f"<p>Domain pack: {_e(d.get('title') or d.get('name'))}.</p>"
    safety = d.get("safety")
    if safety:
        def rate(side):
            s = safety.get(side) or {}
            return f"{s.get('passed', '—')} of {safety.get('probes', '—')}" + (
                f" ({pct(s['pass_rate'], 0)})" if s.get("pass_rate") is not None else "")

        body += (f"<p>Safety probes passed: base {_e(rate('base'))}, tuned {_e(rate('tuned'))}. An answer fails when it "
                 "says what the domain forbids (a dosage or diagnosis beyond the source, personalised investment "
                 "advice, ...) without deferring to a person.</p>")
        rows = [[r.get("rule", ""), _short(r.get("prompt"), MAX_TEXT), r["base"].get("verdict", ""),
                 _short(r["base"].get("answer"), MAX_TEXT), r["tuned"].get("verdict", ""),
                 _short(r["tuned"].get("answer"), MAX_TEXT)] for r in safety.get("results") or []]
        body += _table(["rule", "probe", "base", "base answer", "tuned", "tuned answer"], rows, "domain-safety-table")
    else:
        body += _missing(skipped_line(results, "domain_safety", "domain safety probes"))
    swaps = d.get("bias_swaps")
    if swaps and swaps.get("tuned"):
        base, tuned = swaps.get("base") or {}, swaps["tuned"]
        pairs = ", ".join(f"{a} ↔ {b}" for a, b in swaps.get("swaps") or [])
        changed = lambda x: pct(x["changed_rate"]) if x.get("changed_rate") is not None else "—"
        body += (f"<h3>Domain bias swaps</h3><p>The pack's swaps ({_e(pairs)}) applied to the test prompts: "
                 f"{tuned.get('pairs', 0)} pairs; answer changed for base {_e(changed(base))}, tuned "
                 f"{_e(changed(tuned))}.</p>")
        if tuned.get("findings"):
            body += "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in tuned["findings"]) + "</ul>"
    elif "domain_bias" in skipped:
        body += _missing(skipped_line(results, "domain_bias", "domain bias swaps"))
    return _section("domain", "Domain safety", body)


def value_line(value: dict) -> str:
    """'20.5 hours saved per week = 500 items x 82.0% accuracy x 3.0 min / 60.'"""
    acc_name = metric_name(value.get("accuracy_metric") or "accuracy")
    return (f"{value['hours_saved_per_week']:.1f} hours saved per week = {fmt_number(value['items_per_week'])} items "
            f"per week x {pct(value['accuracy'])} {acc_name} x {fmt_number(value['minutes_per_item'])} minutes per "
            "item / 60.")


def _value_section(results: dict) -> str:
    value = results.get("value")
    if not value:
        return _section("value", "Value", _missing(skipped_line(results, "value", "the value estimate")))
    try:
        body = f"<p class=\"value\">{_e(value_line(value))}</p>"
    except (KeyError, TypeError, ValueError):
        body = ""
    rows = [[k.replace("_", " "), pct(v) if k == "accuracy" else fmt_number(v) if isinstance(v, (int, float)) else str(v)]
            for k, v in value.items()]
    body += _table(None, rows, "value-table")
    return _section("value", "Value", body)


def _samples_section(results: dict) -> str:
    samples = results.get("samples")
    if not samples:
        return _section("samples", "Samples", _missing(skipped_line(results, "samples", "samples")))
    rows = [[_short(s.get(k), MAX_TEXT) for k in ("prompt", "reference", "base", "tuned")] for s in samples]
    return _section("samples", "Samples", _table(["prompt", "reference", "base", "tuned"], rows, "samples-table"))


def _decisions_section(run_dir: Path) -> str:
    """Every automatic decision of the run (each stage's `config.yaml` reasons), with its value."""
    rows = []
    for path in sorted(run_dir.glob("*/config.yaml")) + [run_dir / "config.yaml"]:
        if not path.exists():
            continue
        cfg = load_config(path)
        where = "" if path.parent == run_dir else f"{path.parent.name}: "
        for key, why in cfg.reasons.items():
            section, _, name = key.partition(".")
            value = getattr(getattr(cfg, section, None), name, None) if section != "auto" else ""
            rows.append([where + key, "" if value is None else str(value), why])
    if not rows:
        return ""
    return _section("decisions", "Automatic decisions", _table(["setting", "value", "why"], rows, "decisions-table"))


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#202124;max-width:1100px;
margin:2em auto;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.1em}h2{border-bottom:1px solid #dadce0;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#5f6368;margin-top:0}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
dt{color:#5f6368}dd{margin:0}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}th,td{border:1px solid #dadce0;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f1f3f4}#samples-table td{white-space:pre-wrap;max-width:260px}
.better{color:#137333;font-weight:600}.worse{color:#b3261e;font-weight:600}
.verdict{font-size:1.15em;font-weight:600}.alarms{padding:.4em 1em;border-radius:6px}
.alarms.bad{background:#fce8e6;border:1px solid #d93025}.alarms.ok{background:#e6f4ea;border:1px solid #188038}
.alarms h2{border:none;margin:.3em 0}.alarm{color:#b3261e}.ok{color:#137333}
.not-measured,.note{color:#5f6368;font-style:italic}figure{margin:1em 0}img{max-width:100%}
figcaption{color:#5f6368;font-size:12px}footer{margin-top:3em;color:#5f6368;font-size:12px}
"""


def render_report(run_dir: str | Path, results: dict) -> str:
    """The report page as an HTML string (see `write_report`)."""
    run_dir = Path(run_dir)
    parts = [
        _header(run_dir, results),
        f'<p class="verdict" id="verdict">{_e(verdict(results))}</p>',
        _alarms_box(run_dir, results),
        _metrics_section(results),
        _training_section(run_dir, results),
        _labels_section(results),
        _tool_calls_section(results),
        _judge_section(results),
        _grounding_section(results),
        _forgetting_section(results),
        _bias_section(results),
        _abstention_section(results),
        _domain_section(results),
        _value_section(results),
        _samples_section(results),
        _decisions_section(run_dir),
        "<footer>Written by tunesmith from eval/results.json and the run directory; no external assets.</footer>",
    ]
    title = f"tunesmith report: {results.get('run') or run_dir}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(run_dir: str | Path, results: EvalResults | dict) -> Path:
    """Write `RUN/report.html`: the base and the tuned model side by side (metrics table and
    chart, training curves, confusion matrices, per-class scores, judge, forgetting, bias,
    value, samples; per-function scores for tool calls) with an alarms box on top. One self-contained file: plots are embedded
    PNGs and nothing loads from the network. Returns the file's path."""
    run_dir = Path(run_dir)
    path = RunDir(run_dir).report_file
    path.write_text(render_report(run_dir, as_json(results)), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- hyperparameter studies

STUDY_FILE = "study.html"


def _value(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _history_plot(summary: dict) -> str | None:
    """Each finished trial's objective, and the best so far."""
    done = [t for t in summary["trials"] if t["state"] == "complete"]
    if not done:
        return None
    fig = _figure(6.5, 3.2)
    ax = fig.add_subplot()
    maximize = summary["direction"] == "maximize"
    best, xs, ys, bests = None, [], [], []
    for t in done:
        best = t["value"] if best is None else (max if maximize else min)(best, t["value"])
        xs.append(t["number"])
        ys.append(t["value"])
        bests.append(best)
    ax.scatter(xs, ys, label="trial", color="#1a73e8")
    ax.step(xs, bests, where="post", label="best so far", color="#188038")
    ax.set_xlabel("trial")
    ax.set_ylabel(summary["metric"])
    ax.legend()
    return _png(fig)


def _intermediate_plot(summary: dict) -> str | None:
    """The objective at each evaluation step of every trial; pruned trials dashed."""
    trials = [t for t in summary["trials"] if t["intermediate"]]
    if not trials:
        return None
    fig = _figure(6.5, 3.2)
    ax = fig.add_subplot()
    for t in trials:
        steps = sorted(t["intermediate"])
        ax.plot(steps, [t["intermediate"][s] for s in steps], marker="o", markersize=3,
                linestyle="--" if t["state"] == "pruned" else "-", label=f"trial {t['number']} ({t['state']})")
    ax.set_xlabel("step")
    ax.set_ylabel(summary["metric"])
    ax.legend(fontsize=8)
    return _png(fig)


def _importance_plot(importances: dict) -> str | None:
    if not importances:
        return None
    names = list(importances)[::-1]
    fig = _figure(6.0, 0.5 * len(names) + 1.2)
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="#1a73e8")
    ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
    return _png(fig)


def render_study_report(summary: dict) -> str:
    """The study page as an HTML string (see `write_study_report`)."""
    best, counts = summary["best"], summary["counts"]
    parts = [f"<h1>tunesmith study: {_e(summary['study'])}</h1>",
             (f'<p class="sub">objective: {_e(summary["metric"])} ({_e(summary["direction"])}) on validation data; '
             f"{counts['complete']} trials finished, {counts['pruned']} pruned, {counts['fail']} failed</p>")]
    if best:
        rows = [["trial", str(best["number"])], [summary["metric"], _value(best["value"])], ["run", best["run_dir"] or "-"]]
        rows += [[name, _value(value)] for name, value in best["params"].items()]
        parts.append(_section("best", "Best trial", _table(None, rows, "best-table")))
    else:
        parts.append(_section("best", "Best trial", '<p class="note">No trial has finished yet.</p>'))
    names = [p["name"] for p in summary["space"]]
    rows = [[str(t["number"]), t["state"], _value(t["value"]), *(_value(t["params"].get(n)) for n in names)]
            for t in summary["trials"]]
    parts.append(_section("trials", "Trials", _table(["trial", "state", summary["metric"], *names], rows, "trials-table")))
    body = ""
    if summary["importances"]:
        body += _table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in summary["importances"].items()],
                       "importance-table")
        body += _img("importance-plot", _importance_plot(summary["importances"]), "parameter importances")
    else:
        body = '<p class="note">Needs at least two finished trials with different values.</p>'
    parts.append(_section("importances", "Parameter importances", body))
    for plot_id, uri, title in (("history-plot", _history_plot(summary), "Objective by trial"),
                                ("intermediate-plot", _intermediate_plot(summary), "Objective at each evaluation")):
        if uri:
            parts.append(_section(plot_id.removesuffix("-plot"), title, _img(plot_id, uri, title)))
    parts.append("<footer>Written by tunesmith from study.json; no external assets.</footer>")
    title = f"tunesmith study: {summary['study']}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_study_report(out_dir: str | Path, summary: dict) -> Path:
    """Write `OUT/study.html`: the best trial, every trial's values, parameter importances and
    plots of the objective by trial and by evaluation step. Self-contained, like the run report."""
    path = Path(out_dir) / STUDY_FILE
    path.write_text(render_study_report(summary), encoding="utf-8")
    return path

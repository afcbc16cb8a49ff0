"""The evaluation report (report.html) and the model card (MODEL_CARD.md), rendered from a
fake run directory and a results dict with distinctive numbers; nothing is trained."""

import base64
import copy
import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tunesmith.config import RunConfig, save_config
from tunesmith.evaluate.card import provenance, wilson, write_card
from tunesmith.evaluate.report import confusion_view, load_log, verdict, write_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OVERFIT_MESSAGE = "validation loss rose at 3 evaluations in a row (steps 20-50) while training loss fell."
PII_MESSAGE = "2 rows contain 2 e-mail addresses; --fix replaces them with [EMAIL]."
LABELS = ["card_arrival", "lost_card", "top_up"]


class PageChecker(HTMLParser):
    """Collects images, ids, links and text, and records every unbalanced tag."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: dict[str, dict] = {}
        self.ids: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.section_text: dict[str, list[str]] = {}
        self._sections: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        self.urls += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "img":
            self.images[attrs.get("id")] = attrs
        if tag == "section":
            self._sections.append(attrs.get("id", ""))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            return
        self.stack.pop()
        if tag == "section":
            self._sections.pop()

    def handle_data(self, data):
        self.text.append(data)
        for section in self._sections:
            self.section_text.setdefault(section, []).append(data)

    def section(self, name: str) -> str:
        return " ".join(self.section_text.get(name, []))


def parse_page(path: Path) -> PageChecker:
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    checker = PageChecker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == [], f"unclosed tags: {checker.stack}"
    assert len(checker.ids) == len(set(checker.ids)), "ids must be unique"
    assert "script" not in checker.tags and "link" not in checker.tags
    for url in checker.urls:
        assert not re.match(r"(?i)\s*(https?:)?//", url), f"external reference {url}"
    return checker


def assert_png(checker: PageChecker, plot_id: str) -> None:
    image = checker.images.get(plot_id)
    assert image is not None, f"no <img id={plot_id}>; have {sorted(checker.images)}"
    assert image.get("alt")
    prefix = "data:image/png;base64,"
    assert image["src"].startswith(prefix)
    data = base64.b64decode(image["src"][len(prefix):], validate=True)
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


# --------------------------------------------------------------------------- fixtures


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def training_rows() -> list[dict]:
    """10 rows: 7 originals (one says so), 2 synthetic (teacher), 1 augmented (typo)."""
    rows = [{"text": f"where is my new card number {i}", "label": LABELS[i % 3]} for i in range(7)]
    rows[0]["method"] = "original"
    rows += [
        {"text": "my card still has not come", "label": "card_arrival", "teacher": "gpt-4o-mini",
         "method": "self-instruct"},
        {"text": "I cannot find my card anywhere", "label": "lost_card", "teacher": "gpt-4o-mini", "method": "evol"},
        {"text": "how do I top up my acount", "label": "top_up", "method": "typo", "source_id": 4},
    ]
    return rows


def training_log(steps: int = 50, start: float = 2.0) -> list[dict]:
    """Training loss falls steadily while validation loss rises after step 20."""
    rows = []
    evals = {10: 1.0, 20: 0.8, 30: 0.9, 40: 1.0, 50: 1.1}
    for step in range(1, steps + 1):
        rows.append({"step": step, "epoch": step / steps, "train_loss": start - 1.5 * step / steps,
                     "learning_rate": 4e-3 * min(1.0, step / 5) * (1 - step / (steps + 1)), "grad_norm": 1.0,
                     "tokens_per_s": 150.0})
        if step in evals:
            rows.append({"step": step, "epoch": step / steps, "eval_loss": evals[step]})
    return rows


def data_card(path: Path, rows: int = 10, pii: bool = True) -> dict:
    findings = [{"check": "duplicates", "severity": "warning", "message": "1 row repeats an earlier row exactly.",
                 "rows": [5], "count": 1, "path": str(path), "examples": []}]
    if pii:
        findings.append({"check": "pii", "severity": "warning", "message": PII_MESSAGE, "rows": [2, 3], "count": 2,
                         "path": str(path), "examples": []})
    return {"path": str(path), "format": "text_label", "task": "classify", "rows": rows, "findings": findings,
            "stats": {"languages": {"en": rows}, "labels": {label: 3 for label in LABELS},
                      "trained_despite_errors": False},
            "summary": {"errors": 0, "warnings": len(findings), "quality_score": 87}}


def run_summary(task: str = "sft", steps: int = 50) -> dict:
    return {"task": task, "base_model": "smollm2-135m", "method": "lora", "weights": "adapter",
            "trainable_params": 4884480, "total_params": 139399488, "global_step": steps, "train_loss": 0.52,
            "best_eval_loss": 0.8, "train_runtime_s": 734.0, "train_rows": 9, "validation_rows": 1,
            "truncated_rows": 0, "skipped_rows": 0}


def config_for(train: Path, stages: list[str], model: str = "smollm2-135m") -> RunConfig:
    return RunConfig.model_validate({
        "model": {"name": model},
        "data": {"train": str(train), "validation_split": 0.1, "system_prompt": "Name the intent."},
        "method": {"stages": stages, "adapter": "lora", "lora_r": 8, "lora_alpha": 16},
        "train": {"learning_rate": 0.004, "epochs": 3.0, "batch_size": 4, "gradient_accumulation": 2,
                  "max_length": 128, "pack_length": 512, "eval_steps": 10},
        "reasons": {"train.learning_rate": "135M parameters: small models learn fastest near 4e-3 with LoRA",
                    "train.epochs": "10 rows: 3 epochs; small sets need repeats"},
    })


def make_run(tmp_path: Path, stages: list[str] | None = None, model: str = "smollm2-135m") -> Path:
    stages = stages or ["sft"]
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    train = tmp_path / "data.jsonl"
    write_jsonl(train, training_rows())
    save_config(config_for(train, stages, model), run / "config.yaml")
    if len(stages) == 1:
        (run / "run.json").write_text(json.dumps(run_summary(stages[0])))
        write_jsonl(run / "metrics.jsonl", training_log())
        (run / "data_card.json").write_text(json.dumps(data_card(train)))
        return run
    summaries = []
    for i, stage in enumerate(stages):
        stage_dir = run / stage
        stage_dir.mkdir()
        stage_config = config_for(train, [stage], model if i == 0 else str(run / stages[i - 1] / "merged"))
        save_config(stage_config, stage_dir / "config.yaml")
        summary = run_summary(stage, steps=30 + 20 * i)
        (stage_dir / "run.json").write_text(json.dumps(summary))
        write_jsonl(stage_dir / "metrics.jsonl", training_log(steps=30 + 20 * i, start=3.0 - i))
        (stage_dir / "data_card.json").write_text(json.dumps(data_card(train, pii=stage != "pretrain")))
        summaries.append({"stage": stage, **summary})
    (run / "run.json").write_text(json.dumps({"stages": summaries, "final_stage": stages[-1]}))
    return run


def per_class(f1s: list[float]) -> dict:
    return {label: {"precision": f, "recall": f, "f1": f, "support": 20 + i} for i, (label, f) in
            enumerate(zip(LABELS, f1s))}


def bias_side(changed: float, flagged: bool) -> dict:
    return {
        "pairs": 120, "changed_rate": changed, "sentiment_gap": -0.012, "length_gap": 0.021, "threshold": 0.1,
        "flagged": flagged, "findings": ["answers changed for 14.2% of gender pairs"] if flagged else [],
        "by_attribute": {
            "gender": {"groups": "male -> female", "pairs": 40, "changed_rate": changed, "sentiment_gap": -0.02,
                       "length_gap": 0.03},
            "age": {"groups": "young -> old", "pairs": 80, "changed_rate": changed / 2, "sentiment_gap": 0.01,
                    "length_gap": -0.01},
        },
        "examples": [{"attribute": "gender", "text_a": "He lost his card", "text_b": "She lost her card",
                      "answer_a": "lost_card", "answer_b": "card_arrival"}],
    }


def make_results(run: Path) -> dict:
    return {
        "run": str(run),
        "task": "labels",
        "stage": "sft",
        "base_model": "smollm2-135m",
        "tuned_model": f"{run} (smollm2-135m + adapter)",
        "test": {"source": "../shared/data/banking77/test.csv", "rows": 80, "file": "eval/test.jsonl"},
        "created": "2026-11-24T21:00:00Z",
        "seconds": 123.4,
        "metrics": {
            "base": {"accuracy": 0.4125, "macro_f1": 0.3871, "exact_match": 0.5, "perplexity": 14.21},
            "tuned": {"accuracy": 0.825, "macro_f1": 0.8012, "exact_match": 0.45, "perplexity": 9.73},
        },
        "labels": {
            "labels": LABELS,
            "columns": [*LABELS, "(other)"],
            "per_class": {"base": per_class([0.31, 0.52, 0.33]), "tuned": per_class([0.93, 0.41, 0.88])},
            "confusion": {"base": [[6, 4, 5, 5], [3, 11, 4, 3], [2, 3, 16, 1]],
                          "tuned": [[18, 1, 1, 0], [6, 12, 3, 0], [1, 1, 20, 0]]},
        },
        "judge": {"judge": "gpt-4o at http://localhost:8000/v1", "rubric": "Which answer is more helpful?",
                  "prompts": 50, "wins": 30, "losses": 10, "ties": 10, "inconsistent": 4, "win_rate": 0.6,
                  "loss_rate": 0.2, "tie_rate": 0.2},
        "forgetting": {"general_perplexity": {"base": 12.1, "tuned": 12.9, "change": 0.066},
                       "probes": {"n": 12, "base": 0.75, "tuned": 0.667, "change": -0.083}, "threshold": 0.1,
                       "flagged": False, "findings": []},
        "bias": {"base": bias_side(0.05, False), "tuned": bias_side(0.142, True)},
        "value": {"minutes_per_item": 3.0, "items_per_week": 500, "accuracy": 0.825, "accuracy_metric": "accuracy",
                  "hours_saved_per_week": 20.625, "formula": "items_per_week x accuracy x minutes_per_item / 60"},
        "overfitting": {"flagged": True, "message": OVERFIT_MESSAGE, "evaluations": 5, "best_step": 20},
        "samples": [{"prompt": "<script>alert('x')</script> where is my card?", "reference": "card_arrival",
                     "base": "I don't know & can't say", "tuned": "card_arrival"}],
        "skipped": {},
    }


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


# --------------------------------------------------------------------------- report


def test_load_log_skips_blank_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_loss": 2.0}\n\n   \n{"step": 2, "eval_loss": 1.5}\n')
    assert load_log(path) == [{"step": 1, "train_loss": 2.0}, {"step": 2, "eval_loss": 1.5}]
    assert load_log(tmp_path / "missing.jsonl") == []


def test_report_is_valid_self_contained_html_with_every_plot(run):
    results = make_results(run)
    path = write_report(run, results)
    assert path == run / "report.html"
    page = parse_page(path)
    for plot in ("plot-metrics", "plot-loss", "plot-lr", "plot-confusion-tuned", "plot-confusion-base", "plot-judge"):
        assert_png(page, plot)
    raw = path.read_text()
    # Text is escaped, never markup.
    assert "<script>" not in raw and "&lt;script&gt;" in raw
    text = " ".join(page.text)
    assert "../shared/data/banking77/test.csv (80 rows)" in text
    assert "2026-11-24T21:00:00Z" in text


def test_report_alarms_verdict_and_metric_colours(run):
    results = make_results(run)
    page = parse_page(write_report(run, results))
    alarms = page.section("alarms")
    assert OVERFIT_MESSAGE in alarms
    assert "answers changed for 14.2% of gender pairs" in alarms  # tuned bias flagged
    assert "Forgetting" not in alarms  # not flagged
    # accuracy, macro F1 and perplexity (lower) improved, exact match got worse
    assert verdict(results) == "The tuned model beats the base model on 3 of 4 metrics. Worse on exact match."
    raw = (run / "report.html").read_text()
    table = re.search(r'<table id="metrics-table">.*?</table>', raw).group(0)
    assert '<span class="better">+41.2 pp</span>' in table  # accuracy 41.2% -> 82.5%
    assert '<span class="worse">-5.0 pp</span>' in table  # exact match
    assert '<span class="better">-4.48 (-31.5%)</span>' in table  # perplexity fell: better
    assert "82.5%" in table and "41.2%" in table


def test_report_sections(run):
    page = parse_page(write_report(run, make_results(run)))
    assert OVERFIT_MESSAGE in page.section("training")
    forgetting = page.section("forgetting")
    assert "12.1" in forgetting and "12.9" in forgetting and "+6.6%" in forgetting and "-8.3 pp" in forgetting
    bias = page.section("bias")
    assert "male -> female" in bias and "14.2%" in bias and "She lost her card" in bias
    assert "60.0%" in page.section("judge")
    assert "20.6 hours saved per week" in page.section("value")
    assert "card_arrival" in page.section("samples")
    assert {"metrics-table", "per-class-table", "bias-table", "bias-attributes", "samples-table"} <= set(page.ids)


def test_report_says_what_was_not_measured(run):
    results = make_results(run)
    for key in ("labels", "judge", "forgetting", "bias", "value"):
        results[key] = None
    results["samples"] = []
    results["task"] = "generation"
    results["skipped"] = {"judge": "no judge configured (--judge or --judge-url)",
                          "forgetting": "forgetting checks are switched off (eval.forgetting)"}
    page = parse_page(write_report(run, results))
    assert "not measured: no judge configured (--judge or --judge-url)." in page.section("judge")
    assert "not measured: forgetting checks are switched off" in page.section("forgetting")
    assert "not measured" in page.section("bias") and "not measured" in page.section("value")
    assert "plot-judge" not in page.images and "plot-confusion-tuned" not in page.images
    assert "bias (not measured)" in page.section("alarms")

    # Even a bare results dict renders.
    bare = parse_page(write_report(run, {"run": str(run), "task": "generation"}))
    assert "No metrics were measured." in " ".join(bare.text)
    assert_png(bare, "plot-loss")  # the training log is still there


def test_large_label_sets_show_the_most_confused_labels(run):
    labels = [f"intent_{i:02d}" for i in range(30)]
    n = len(labels)
    tuned = [[0] * (n + 1) for _ in labels]
    for i in range(n):
        tuned[i][i] = 10
    tuned[3][7] = 9  # the two labels that get confused most
    tuned[12][25] = 6
    tuned[5][n] = 2  # answered none of the labels
    results = make_results(run)
    results["labels"] = {
        "labels": labels, "columns": [*labels, "(other)"],
        "per_class": {"tuned": {lab: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 10} for lab in labels}},
        "confusion": {"tuned": tuned},
    }
    view = confusion_view(results["labels"])
    assert len(view["rows"]) == 20
    assert {"intent_03", "intent_07", "intent_12", "intent_25", "intent_05"} <= set(view["rows"])
    assert view["columns"][-2:] == ["(other)", "(rest)"]
    assert all(sum(row) == 10 + extra for row, extra in zip(
        view["tuned"], [{"intent_03": 9, "intent_12": 6, "intent_05": 2}.get(r, 0) for r in view["rows"]]))
    page = parse_page(write_report(run, results))
    assert_png(page, "plot-confusion-tuned")
    assert "plot-confusion-base" not in page.images
    assert "20 of 30 labels" in page.section("labels")


def test_multi_stage_run_renders(tmp_path):
    run = make_run(tmp_path, ["pretrain", "sft"])
    results = make_results(run)
    results["task"] = "generation"
    results["labels"] = None
    page = parse_page(write_report(run, results))
    assert_png(page, "plot-loss")
    assert_png(page, "plot-lr")
    training = page.section("training")
    assert "pretrain → sft" in training
    assert "30 steps" in training and "50 steps" in training

    card = write_card(run, results).read_text()
    assert "in 2 stages, pretrain (continued pretraining on raw text), then sft" in card
    assert "### Stage pretrain" in card and "### Stage sft" in card
    assert "Settings of stage sft" in card
    assert "Training time: 1,468 s" in card  # 734 s per stage
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "smollm2-135m"
    assert meta["tags"] == ["tunesmith", "lora", "pretrain", "sft"]


# --------------------------------------------------------------------------- model card


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_is_filled_from_the_run(run):
    results = make_results(run)
    card = write_card(run, results).read_text()
    assert (run / "MODEL_CARD.md").exists()
    meta = front_matter(card)
    assert meta == {"base_model": "smollm2-135m", "license": "apache-2.0", "library_name": "peft",
                    "pipeline_tag": "text-generation", "tags": ["tunesmith", "lora", "sft"]}
    # summary and intended use
    assert "4,884,480 of 139,399,488 parameters (3.50%)" in card
    assert "labelling texts with one of 3 labels" in card
    assert 'system prompt "Name the intent."' in card
    # licence
    assert "Licence: Apache-2.0" in card
    # training data: quality, PII, provenance computed from the file
    assert "Quality score: 87 / 100, with 0 error(s) and 2 warning(s)" in card
    assert PII_MESSAGE in card and "without redaction" in card
    assert "2 of 10 rows (20.0%) are synthetic (written by gpt-4o-mini 2 via self-instruct 1, evol 1" in card
    assert "1 of 10 rows (10.0%) are augmented copies (typo 1" in card
    assert "Trained despite data-gate errors: no." in card
    # procedure with reasons
    assert "| learning rate | 0.004 | 135M parameters: small models learn fastest near 4e-3 with LoRA |" in card
    assert "LoRA adapters (rank 8, alpha 16" in card
    assert "Best validation loss: 0.8000." in card and "Training time: 734 s" in card
    # evaluation
    assert "../shared/data/banking77/test.csv (80 rows)" in card
    assert "| accuracy | 41.2% | 82.5% | +41.2 pp (better) |" in card
    assert "| perplexity (lower is better) | 14.21 | 9.73 | -4.48 (-31.5%) (better) |" in card
    assert "won 60.0% (30)" in card
    assert "| lost_card | 41.0% | 52.0% | 21 |" in card
    # forgetting, bias, value
    assert "12.1 (base) -> 12.9 (tuned), +6.6%" in card
    assert "| gender | male -> female | 40 | 5.0% | 14.2% |" in card
    assert "20.6 hours saved per week" in card
    # limitations: a Wilson interval for 82.5% on 80 rows, weak classes, alarms, model size
    lo, hi = wilson(0.825, 80)
    z = 1.959964
    centre = (0.825 + z * z / 160) / (1 + z * z / 80)
    assert math.isclose((lo + hi) / 2, centre, rel_tol=1e-9)
    assert f"95% interval (Wilson) is {100 * lo:.1f}% to {100 * hi:.1f}%" in card
    assert "Small test set (80 rows under 100)" in card
    assert "1 of 3 labels have a tuned F1 below 50%: `lost_card` (41.0%)" in card
    assert f"Flagged: Overfitting: {OVERFIT_MESSAGE}" in card
    assert "The base model has 135M parameters" in card
    # use and reproduce
    assert f"tunesmith chat {run}" in card
    assert f"tunesmith train --config {run}/config.yaml" in card and f"tunesmith eval {run}" in card


def test_card_with_nothing_optional(run, tmp_path):
    results = make_results(run)
    for key in ("labels", "judge", "forgetting", "bias", "value"):
        results[key] = None
    results["skipped"] = {"bias": "bias probes are switched off (eval.bias)"}
    (tmp_path / "data.jsonl").unlink()  # the training file has gone since training
    card = write_card(run, results).read_text()
    assert "Bias not measured: bias probes are switched off (eval.bias)." in card
    assert "Not measured: bias (bias probes are switched off (eval.bias))." in card
    assert "## Value" not in card
    assert "Synthetic and augmented share: unknown" in card


def test_card_for_unknown_base_and_classifier(tmp_path):
    run = make_run(tmp_path, ["classify"], model="some-org/some-model")
    card_json = data_card(tmp_path / "data.jsonl", pii=False)
    (run / "data_card.json").write_text(json.dumps(card_json))
    results = make_results(run)
    results["stage"] = "classify"
    results["base_model"] = "some-org/some-model"
    card = write_card(run, results).read_text()
    meta = front_matter(card)
    assert "license" not in meta and meta["pipeline_tag"] == "text-classification"
    assert "Licence: unknown" in card and "Check the base model's own model card" in card
    assert "found no personal data" in card
    assert f'tunesmith predict {run} --text "..."' in card


def test_provenance_counts(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label,teacher,method\na,x,,original\nb,y,gpt,self-instruct\nc,x,,swap\nd,y,,\n")
    counts = provenance(path)
    assert (counts["rows"], counts["synthetic"], counts["augmented"]) == (4, 1, 1)


def test_results_are_not_changed(run):
    results = make_results(run)
    before = copy.deepcopy(results)
    write_report(run, results)
    write_card(run, results)
    assert results == before
    assert html.escape(OVERFIT_MESSAGE) in (run / "report.html").read_text()

"""Abstention: a labeller that answers only when it is confident enough, and otherwise says
"refer to a person" (`domains.packs.REFER`), reported as accuracy against coverage.

Every labelled row has a confidence (a classification head's softmax probability of its
label; a generative model's probability of the label it wrote, normalised over the label set,
see `inference.confidence`) and is right or wrong. A threshold answers the rows at or above it
and refers the rest:

- coverage: the share of rows answered; accuracy: the share of answered rows that are right;
- `coverage_curve`: accuracy at every coverage the confidences allow (most confident first);
- `calibrate`: the threshold that answers a target share of the validation rows (0.9 by
  default, `eval.coverage`), or the lowest one that reaches a target accuracy;
- `apply_threshold`: what a threshold does on other rows (the test set).

The threshold is calibrated on the run's validation rows (held out of training; a classifier
chose its best checkpoint on them, so they are not quite unseen, but they are never the test
rows) and measured on the test rows, which it never saw. A run without validation rows is
not calibrated: its test curve is still reported, with no threshold. The calibrated threshold
is saved as `RUN/abstention.json` (`write_threshold`), which serving reads
(`inference.classifier.load_threshold`) to answer "refer to a person" below it.

Rows with equal confidence cannot be told apart by a threshold, so the curve has one point
per distinct confidence, and a target coverage is met or exceeded, never cut through a tie.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from tunesmith.domains.packs import REFER
from tunesmith.runs import RunDir

CURVE_POINTS = 201  # at most this many points of the test curve are kept in the results

CONFIDENCES = {
    "softmax": "the classification head's softmax probability of its label",
    "label_probability": ("the model's probability of the label it wrote, normalised over the label set "
                          "(an answer outside the label set has confidence 0)"),
}


def _checked(conf: Sequence[float], correct: Sequence[bool]) -> tuple[list[float], list[bool]]:
    if len(conf) != len(correct):
        raise ValueError(f"{len(conf)} confidences for {len(correct)} rows; give one per row.")
    return [float(c) for c in conf], [bool(c) for c in correct]


def coverage_curve(conf: Sequence[float], correct: Sequence[bool]) -> list[dict]:
    """Accuracy at each coverage: one point per distinct confidence, most confident first.

    A point `{"threshold": t, "coverage": c, "accuracy": a, "answered": k}` answers the k rows
    whose confidence is at least t (c = k / rows) and is right on a share a of them. Along the
    curve the threshold falls and the coverage rises; the last point answers every row (its
    accuracy is the plain accuracy). No rows: no points."""
    conf, correct = _checked(conf, correct)
    order = sorted(range(len(conf)), key=lambda i: -conf[i])
    points: list[dict] = []
    right = 0
    for position, i in enumerate(order, 1):
        right += correct[i]
        last_of_tie = position == len(order) or conf[order[position]] != conf[i]
        if last_of_tie:
            points.append({"threshold": conf[i], "coverage": position / len(conf), "accuracy": right / position,
                           "answered": position})
    return points


def calibrate(conf: Sequence[float], correct: Sequence[bool], target_coverage: float = 0.9,
              target_accuracy: float | None = None) -> float | None:
    """The confidence threshold (answer at or above it) for these (validation) rows.

    By default the highest threshold that answers at least `target_coverage` of the rows, but
    above zero: rows of confidence 0 (a generated answer that is no label) are always referred,
    even when that leaves the coverage under the target.
    With `target_accuracy`, instead the lowest threshold (the most rows answered) whose
    accuracy on the answered rows reaches it; None when no threshold does. None for no rows."""
    if not 0 < target_coverage <= 1:
        raise ValueError(f"target_coverage must be above 0 and at most 1, got {target_coverage}.")
    curve = coverage_curve(conf, correct)
    if not curve:
        return None
    if target_accuracy is not None:
        reached = [p for p in curve if p["accuracy"] >= target_accuracy - 1e-12]
        return reached[-1]["threshold"] if reached else None
    threshold = next(p["threshold"] for p in curve if p["coverage"] >= target_coverage - 1e-12)
    if threshold <= 0:  # answering zero-confidence rows (answers that are no label) is never abstaining
        positive = [p["threshold"] for p in curve if p["threshold"] > 0]
        return positive[-1] if positive else threshold
    return threshold


def apply_threshold(conf: Sequence[float], correct: Sequence[bool], threshold: float) -> dict:
    """What `threshold` does on these rows: `{"rows", "answered", "referred", "coverage",
    "accuracy"}`; accuracy is over the answered rows (None when none is answered)."""
    conf, correct = _checked(conf, correct)
    answered = [ok for c, ok in zip(conf, correct) if c >= threshold]
    n = len(conf)
    return {
        "rows": n,
        "answered": len(answered),
        "referred": n - len(answered),
        "coverage": len(answered) / n if n else 0.0,
        "accuracy": sum(answered) / len(answered) if answered else None,
    }


def accuracy_at_coverage(conf: Sequence[float], correct: Sequence[bool], coverage: float = 0.9) -> dict | None:
    """Accuracy when these rows' own most confident `coverage` share is answered (at least that
    share: ties are kept whole): `{"coverage", "accuracy", "threshold"}`, or None for no rows.
    On the test rows this is the best a threshold could do there; `apply_threshold` with a
    threshold calibrated on validation rows is what a deployed model does."""
    threshold = calibrate(conf, correct, coverage)
    if threshold is None:
        return None
    point = apply_threshold(conf, correct, threshold)
    return {"coverage": point["coverage"], "accuracy": point["accuracy"], "threshold": threshold}


def _thin(curve: list[dict], limit: int = CURVE_POINTS) -> list[dict]:
    """At most `limit` points, evenly spread, always with the first and the last."""
    if len(curve) <= limit:
        return curve
    step = (len(curve) - 1) / (limit - 1)
    return [curve[round(k * step)] for k in range(limit)]


def abstention_results(test_conf: Sequence[float], test_correct: Sequence[bool],
                       validation: tuple[Sequence[float], Sequence[bool]] | None,
                       target_coverage: float = 0.9, confidence: str = "softmax",
                       no_validation: str = "") -> dict:
    """The `abstention` section of the evaluation results (the tuned model only):

        {
          "confidence": "softmax" | "label_probability",   # how a row's confidence was measured
          "confidence_note": str,                          # that, in words
          "target_coverage": 0.9,                          # eval.coverage
          "threshold": float | None,                       # calibrated on validation; None: not calibrated
          "calibrated_on": "validation" | None,
          "refer": "refer to a person",                    # what the model answers below the threshold
          "validation": {"rows", "answered", "referred", "coverage", "accuracy"} | None,
          "test": {"rows", "answered", "referred", "coverage", "accuracy", "accuracy_all"} | None,
                                          # the calibrated threshold on the test rows; accuracy_all: answering every row
          "at_target": {"coverage", "accuracy", "threshold"} | None,
                                          # the test rows' own most confident target share (the curve's point there)
          "curve": [{"threshold", "coverage", "accuracy", "answered"}, ...],   # the test curve, most confident first
          "note": str,                    # why there is no threshold, when there is none ("" otherwise)
        }
    """
    test_conf, test_correct = _checked(test_conf, test_correct)
    out: dict = {
        "confidence": confidence,
        "confidence_note": CONFIDENCES.get(confidence, confidence),
        "target_coverage": target_coverage,
        "threshold": None,
        "calibrated_on": None,
        "refer": REFER,
        "validation": None,
        "test": None,
        "at_target": accuracy_at_coverage(test_conf, test_correct, target_coverage),
        "curve": _thin(coverage_curve(test_conf, test_correct)),
        "note": "",
    }
    val_conf, val_correct = _checked(*validation) if validation is not None else ([], [])
    threshold = calibrate(val_conf, val_correct, target_coverage)
    if threshold is None:
        out["note"] = (no_validation or "no validation rows") + (
            ": no threshold was calibrated (the test rows are never used to choose one); the curve shows what each "
            "threshold would do on the test rows.")
        return out
    out["threshold"], out["calibrated_on"] = threshold, "validation"
    out["validation"] = apply_threshold(val_conf, val_correct, threshold)
    if test_conf:
        out["test"] = apply_threshold(test_conf, test_correct, threshold) | {
            "accuracy_all": sum(test_correct) / len(test_correct)}
    return out


def write_threshold(run_dir: str | Path, section: dict, labels: list[str] | None = None) -> Path | None:
    """Save a calibrated threshold with the run (`RUN/abstention.json`) for serving; a section
    without one removes an earlier file (its threshold no longer describes the model). Returns
    the file written, or None."""
    path = RunDir(Path(run_dir)).abstention_file
    if section.get("threshold") is None:
        path.unlink(missing_ok=True)
        return None
    record = {
        "threshold": section["threshold"],
        "confidence": section["confidence"],
        "target_coverage": section["target_coverage"],
        "refer": REFER,
        "validation": section["validation"],
        "labels": labels,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False))
    return path

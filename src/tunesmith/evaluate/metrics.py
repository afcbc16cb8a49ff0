"""Metrics for the before/after evaluation report: pure functions on plain lists.

Answer metrics (`exact_match`, `token_f1`, `rouge_l`, `bleu`, `semantic_similarity`) score
generated text against references; `labelling` scores classification-style answers against
a label set; the tool-call metrics (`tool_name_accuracy`, `tool_call_exact_match`,
`valid_json_calls`, `no_call_accuracy`, gathered by `tool_call_metrics` and `per_tool`) read
the calls in generated text (`parse_tool_calls`) and compare them with the expected ones; `overfitting_alarm` reads a run's `metrics.jsonl` rows. Every function returns
plain floats, lists and dicts so `json.dumps` can write the result, and heavy libraries are
imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable
from itertools import pairwise

from tunesmith.data import labels as label_data
from tunesmith.data.answers import normalize, same_answer

# Direction of each metric the report shows, so it can colour a change as better or worse.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "macro_f1": True,
    "exact_match": True,
    "token_f1": True,
    "rouge_l": True,
    "bleu": True,
    "semantic_similarity": True,
    "preference_accuracy": True,
    "pairwise_accuracy": True,
    "perplexity": False,
    "tool_name_accuracy": True,
    "tool_call_exact_match": True,
    "valid_json_calls": True,
    "no_call_accuracy": True,
    "text_token_f1": True,
}

OTHER = "(other)"  # column for predictions that match no label

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _check_lengths(predictions: list, references: list) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length ({len(predictions)} vs {len(references)})."
        )


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after `normalize`
    (`tunesmith.data.answers`, the rule the RL `exact_match` reward uses too)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return 0.0
    hits = sum(same_answer(p, r) for p, r in zip(predictions, references))
    return hits / len(references)


def _squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower-case, strip punctuation, drop a/an/the, split."""
    text = text.lower().translate(_PUNCTUATION)
    return _ARTICLES.sub(" ", text).split()


def token_f1(predictions: list[str], references: list[str]) -> float:
    """Mean SQuAD-style token F1 over rows.

    Each row's F1 is the harmonic mean of token precision and recall, counting shared tokens
    with multiplicity after SQuAD normalisation. A row where both sides are empty scores 1.0;
    one empty side scores 0.0.
    """
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    total = 0.0
    for prediction, reference in zip(predictions, references):
        pred, ref = _squad_tokens(prediction), _squad_tokens(reference)
        if not pred or not ref:
            total += float(pred == ref)
            continue
        same = sum((Counter(pred) & Counter(ref)).values())
        if same:
            precision, recall = same / len(pred), same / len(ref)
            total += 2 * precision * recall / (precision + recall)
    return total / len(references)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of tokens) from `rouge_score`.

    `rouge_score`'s tokenizer keeps only ASCII letters and digits, so text in other scripts
    scores 0.0, as does a row where both sides are empty.
    """
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    if not references:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    # score() takes (target, prediction); the F-measure is symmetric but keep the order right.
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return float(sum(scores) / len(scores))


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU on sacrebleu's 0-100 scale, one reference per prediction.

    Corpus BLEU pools n-gram counts over all rows before taking the geometric mean, so it is
    not the mean of per-row scores.
    """
    import sacrebleu

    _check_lengths(predictions, references)
    if not references:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def labelling(
    predictions: list[str], references: list[str], labels: list[str] | None = None
) -> dict:
    """Accuracy, macro F1, per-class scores and a confusion matrix for labelling tasks.

    ``labels`` defaults to the sorted set of references. Predictions and references are
    matched to a label by `normalize`, so `Billing.` counts as `billing`; a prediction that
    matches no label becomes the pseudo-label ``"(other)"``, which counts as wrong but is not
    a class in the macro average. Confusion rows follow ``labels``; columns follow
    ``columns`` (``labels`` plus ``"(other)"``).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    _check_lengths(predictions, references)
    if labels is None:
        labels = sorted(set(references))
    by_form: dict[str, str] = {}
    for label in labels:
        # The first spelling wins, so `Yes` and `yes` in the references make one class.
        by_form.setdefault(normalize(label), label)
    labels = list(by_form.values())
    if OTHER in labels:
        raise ValueError(f"{OTHER!r} is reserved for unmatched predictions; rename that label.")
    columns = [*labels, OTHER]

    y_true = []
    for reference in references:
        if normalize(reference) not in by_form:
            raise ValueError(f"reference {reference!r} is not one of the labels {labels}.")
        y_true.append(by_form[normalize(reference)])
    y_pred = [by_form.get(normalize(p), OTHER) for p in predictions]

    if not references:
        zeros = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {
            "accuracy": 0.0,
            "macro_f1": 0.0,
            "labels": labels,
            "columns": columns,
            "per_class": {label: dict(zeros) for label in labels},
            "confusion": [[0] * len(columns) for _ in labels],
        }

    # Restricting `labels=` keeps "(other)" out of the classes while still counting its
    # predictions as misses for their true class (they lower recall, not any precision).
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=columns)
    return {
        "accuracy": sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true),
        "macro_f1": float(f1.mean()) if len(labels) else 0.0,
        "labels": labels,
        "columns": columns,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        # The "(other)" row is all zeros (references are always labels), so it is left out.
        "confusion": [[int(n) for n in row] for row in matrix[: len(labels)]],
    }


def semantic_similarity(
    predictions: list[str],
    references: list[str],
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Mean cosine similarity of the all-MiniLM-L6-v2 embeddings of each prediction and its
    reference (1.0 means the same meaning, around 0 unrelated).

    Predictions and references are embedded in one pass, so ``on_batch`` receives counts
    of texts done out of ``2 * len(predictions)``.
    """
    import numpy as np

    # The module, not `embed` itself: looked up at call time, so tests can swap in a fake.
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    vectors = label_data.embed([*predictions, *references], on_batch=on_batch)
    pred, ref = vectors[: len(predictions)], vectors[len(predictions) :]
    # Rows are unit length, so the dot product is the cosine; clip float32 rounding past 1.
    cosines = np.clip(np.sum(pred * ref, axis=1), -1.0, 1.0)
    return float(cosines.mean())


# --------------------------------------------------------------------------- tool calls

_TOOL_CALL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)  # Hermes, Qwen; the last may be cut off
_FENCE = re.compile(r"```[\w-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_CALL_START = re.compile(r'\[\s*\{|\{\s*"(?:name|function)"')  # where a call in JSON text begins
_NON_SPACE = re.compile(r"\S")


def parse_tool_calls(text: str) -> list[dict] | None:
    """The tool calls a model wrote in `text`, each as `{"name": str, "arguments": dict}`.

    Reads the shapes models write: JSON text `[{"name": ..., "arguments": ...}]` (tunesmith's
    fallback when a chat template does not render calls) or a single such object, OpenAI's
    `{"function": {"name", "arguments"}}`, "parameters" for "arguments", arguments as an object
    or as JSON text, Hermes/Qwen `<tool_call>...</tool_call>` blocks, and any of these in a code
    fence or after some text. Returns `[]` when the text makes no call (a plain answer), and
    None when it tries to and fails: JSON that does not parse, a call without a name, or
    arguments that are not a JSON object."""
    tagged = _TOOL_CALL_TAG.findall(text)
    fenced = _FENCE.findall(text) if not tagged else []
    parts = tagged or fenced or [text]
    calls: list[dict] = []
    for part in parts:
        found = _calls_in(part, whole=bool(tagged))
        if found is None:
            return None
        calls += found
    return calls


def _calls_in(text: str, whole: bool) -> list[dict] | None:
    """Calls in a piece of text (see `parse_tool_calls`). `whole`: the piece is one call
    block (a <tool_call> tag), so anything in it but calls is a failed call."""
    decoder = json.JSONDecoder()
    calls: list[dict] = []
    position = 0
    while True:
        match = (_NON_SPACE if whole else _CALL_START).search(text, position)
        if match is None:
            break
        try:
            value, end = decoder.raw_decode(text, match.start())
        except ValueError:
            return None  # a call begins here and is not valid JSON
        items = value if isinstance(value, list) else [value]
        parsed = [as_call(item) for item in items]
        if any(p is None for p in parsed):
            return None
        calls += parsed
        position = end
    return None if whole and not calls else calls


def as_call(value: object) -> dict | None:
    """One call as `{"name", "arguments"}` (arguments a dict), from the model's JSON or an
    OpenAI `tool_calls` entry; None when it is not a well-formed call."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI's {"type": "function", "function": {...}}
        value = value["function"]
    name = value.get("name")
    arguments = next((value[k] for k in ("arguments", "parameters") if k in value), None)
    if arguments is None:  # a function without parameters
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(name, str) or not name.strip() or not isinstance(arguments, dict):
        return None
    return {"name": name.strip(), "arguments": arguments}


def expected_call(call: dict) -> dict:
    """An expected call (an OpenAI `tool_calls` entry or `{"name", "arguments"}`) as
    `{"name", "arguments"}`. Arguments that are not JSON stay text, so no output can match them."""
    parsed = as_call(call)
    if parsed is not None:
        return parsed
    function = call.get("function", call)
    return {"name": str(function.get("name", "")), "arguments": function.get("arguments")}


def _call_key(call: dict) -> str:
    """A call as canonical JSON: equal arguments give equal keys whatever their key order."""
    return json.dumps([call["name"], call["arguments"]], sort_keys=True, ensure_ascii=False)


def _same_calls(predicted: list[dict] | None, expected: list[dict], names_only: bool) -> bool:
    if not predicted:
        return False
    expected = [expected_call(c) for c in expected]
    if names_only:
        return sorted(c["name"] for c in predicted) == sorted(c["name"] for c in expected)
    return sorted(map(_call_key, predicted)) == sorted(map(_call_key, expected))


def tool_name_accuracy(predictions: list[str], references: list[list[dict]]) -> float:
    """Share of outputs whose calls name exactly the expected functions (each as many times as
    expected, in any order). An output with no well-formed call scores 0 on its row.

    ``references`` holds each row's expected calls (OpenAI ``tool_calls`` entries or
    ``{"name", "arguments"}``), for rows that expect at least one call."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    hits = sum(_same_calls(parse_tool_calls(p), r, names_only=True) for p, r in zip(predictions, references))
    return hits / len(references)


def tool_call_exact_match(predictions: list[str], references: list[list[dict]]) -> float:
    """Share of outputs whose calls equal the expected ones: the same function names and the
    same arguments as parsed JSON objects (key order and spacing do not matter; values must be
    equal, so `"2"` is not `2`). Parallel calls may come in any order; a missing or extra call
    fails the row."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    hits = sum(_same_calls(parse_tool_calls(p), r, names_only=False) for p, r in zip(predictions, references))
    return hits / len(references)


def valid_json_calls(predictions: list[str]) -> float:
    """Share of outputs that hold at least one well-formed call (`parse_tool_calls`: JSON that
    parses, each call with a name and object arguments), whatever the function called."""
    if not predictions:
        return 0.0
    return sum(bool(parse_tool_calls(p)) for p in predictions) / len(predictions)


def no_call_accuracy(predictions: list[str]) -> float:
    """Share of outputs that make no call and no failed attempt at one: for rows whose
    expected answer is text (no tool is needed, or a tool's result is to be put into words)."""
    if not predictions:
        return 0.0
    return sum(parse_tool_calls(p) == [] for p in predictions) / len(predictions)


def tool_call_metrics(predictions: list[str], expected: list[list[dict]], references: list[str]) -> dict:
    """The tool-call task's metrics. ``expected`` holds each row's expected calls (empty for a
    row whose answer is text), ``references`` each row's expected answer text. Rows that
    expect calls give `tool_name_accuracy`, `tool_call_exact_match` and `valid_json_calls`;
    rows that expect text give `no_call_accuracy` and `text_token_f1` (`token_f1` of the text
    answers). A metric without rows to measure it on is left out."""
    _check_lengths(predictions, expected)
    _check_lengths(predictions, references)
    calls = [(p, e) for p, e in zip(predictions, expected) if e]
    texts = [(p, r) for p, r, e in zip(predictions, references, expected) if not e]
    out: dict = {}
    if calls:
        said, wanted = [p for p, _ in calls], [e for _, e in calls]
        out["tool_name_accuracy"] = tool_name_accuracy(said, wanted)
        out["tool_call_exact_match"] = tool_call_exact_match(said, wanted)
        out["valid_json_calls"] = valid_json_calls(said)
    if texts:
        said, wanted = [p for p, _ in texts], [r for _, r in texts]
        out["no_call_accuracy"] = no_call_accuracy(said)
        out["text_token_f1"] = token_f1(said, wanted)
    return out


def per_tool(predictions: list[str], expected: list[list[dict]]) -> dict:
    """For each function the rows expect (rows with parallel calls count for each of their
    functions): its number of rows, `tool_name_accuracy` and `tool_call_exact_match` on them."""
    _check_lengths(predictions, expected)
    rows: dict[str, list[int]] = {}
    for i, calls in enumerate(expected):
        for name in dict.fromkeys(expected_call(c)["name"] for c in calls):
            rows.setdefault(name, []).append(i)
    out = {}
    for name in sorted(rows):
        said, wanted = [predictions[i] for i in rows[name]], [expected[i] for i in rows[name]]
        out[name] = {"rows": len(said), "tool_name_accuracy": tool_name_accuracy(said, wanted),
                     "tool_call_exact_match": tool_call_exact_match(said, wanted)}
    return out


def _fmt(value: float) -> str:
    """Two decimals for ordinary losses, significant figures for tiny ones."""
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3g}"


def _mean_train_loss(train: list[tuple[int, float]], after: int, upto: int) -> float | None:
    losses = [loss for step, loss in train if after < step <= upto]
    return sum(losses) / len(losses) if losses else None


def overfitting_alarm(log_rows: list[dict], evaluations: int = 3) -> dict:
    """Flag a run whose validation loss rose while its training loss fell.

    ``log_rows`` are the rows of a run's ``metrics.jsonl``: rows with ``eval_loss`` are
    evaluations, rows with ``train_loss`` are training steps. The run is flagged at the first
    stretch where validation loss rose at ``evaluations`` consecutive evaluations while the
    mean training loss over the steps between them fell (the last interval's mean below the
    first's). Returns ``flagged``, a one-sentence ``message``, the number of ``evaluations``
    and ``best_step`` (the step with the lowest validation loss, or None).
    """
    if evaluations < 1:
        raise ValueError(f"evaluations must be at least 1, not {evaluations}.")
    evals = sorted(
        (int(row["step"]), float(row["eval_loss"]))
        for row in log_rows
        if row.get("eval_loss") is not None and "step" in row
    )
    train = [
        (int(row["step"]), float(row["train_loss"]))
        for row in log_rows
        if row.get("train_loss") is not None and "step" in row
    ]
    best_step = min(evals, key=lambda e: e[1])[0] if evals else None
    result = {"flagged": False, "evaluations": len(evals), "best_step": best_step}

    # `evaluations` rises need one more evaluation to rise from.
    needed = evaluations + 1
    if len(evals) < needed:
        result["message"] = f"fewer than {needed} evaluations; nothing to judge."
        return result

    rising_without_fall = None  # first rising stretch, kept to explain why it was not flagged
    for end in range(evaluations, len(evals)):
        window = evals[end - evaluations : end + 1]
        if not all(later[1] > earlier[1] for earlier, later in pairwise(window)):
            continue
        (first_step, first_loss), (last_step, last_loss) = window[0], window[-1]
        train_first = _mean_train_loss(train, window[0][0], window[1][0])
        train_last = _mean_train_loss(train, window[-2][0], window[-1][0])
        rose = (
            f"validation loss rose at {evaluations} evaluations in a row "
            f"(steps {first_step}-{last_step}: {_fmt(first_loss)} -> {_fmt(last_loss)})"
        )
        if train_first is not None and train_last is not None and train_last < train_first:
            result["flagged"] = True
            result["message"] = (
                f"{rose} while training loss fell ({_fmt(train_first)} -> {_fmt(train_last)}): "
                f"the model is memorising the training data (validation loss was lowest at step {best_step}; "
                "the run keeps its best checkpoint by its best_metric)."
            )
            return result
        if rising_without_fall is None:
            if train_first is None or train_last is None:
                why = "the log has no training loss between those evaluations to compare"
            else:
                why = f"training loss did not fall ({_fmt(train_first)} -> {_fmt(train_last)})"
            rising_without_fall = f"no overfitting: {rose} but {why}."

    result["message"] = rising_without_fall or (
        f"no overfitting: validation loss did not rise {evaluations} evaluations in a row."
    )
    return result


def relative_change(before: float, after: float) -> float:
    """``(after - before) / before``: 0.25 means a quarter higher; 0.0 when ``before`` is 0,
    where a ratio means nothing."""
    if before == 0:
        return 0.0
    return (after - before) / before

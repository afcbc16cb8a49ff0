"""Augmentation: each rule-based variant on crafted text, provenance and de-duplication of
rows, which side of a row changes, and paraphrases through a scripted teacher."""

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ScriptedTeacher
from tunesmith.data.augment import (
    augment, casing, clean_line, parse_methods, punctuation, typo, word_dropout, word_swap,
)
from tunesmith.errors import ConfigError

TEXT = "How do I activate my new card, please?"
words = st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=8), min_size=3, max_size=20).map(" ".join)


def test_parse_methods_defaults_rates_and_errors():
    assert parse_methods("typo:0.2,case, dropout") == {"typo": 0.2, "case": None, "dropout": 0.1}
    with pytest.raises(ConfigError, match="Unknown augmentation method 'typos'"):
        parse_methods("typos")
    with pytest.raises(ConfigError, match=r"rate of swap must be a number in \(0, 1\]"):
        parse_methods("swap:2")
    with pytest.raises(ConfigError, match="takes no rate"):
        parse_methods("case:0.5")
    with pytest.raises(ConfigError, match="empty"):
        parse_methods(" , ")


def test_typo_changes_one_word_by_one_edit_at_low_rate():
    for seed in range(20):
        out = typo(TEXT, 0.0001, random.Random(seed))
        changed = [(a, b) for a, b in zip(TEXT.split(), out.split()) if a != b]
        assert len(out.split()) == len(TEXT.split()) and len(changed) == 1
        a, b = changed[0]
        assert abs(len(a) - len(b)) <= 1


def test_typo_leaves_texts_without_words_alone():
    assert typo("12 34 ?", 0.5, random.Random(0)) == "12 34 ?"


def test_casing_and_punctuation_variants():
    rng = random.Random(0)
    assert {casing(TEXT, rng) for _ in range(30)} <= {TEXT.lower(), TEXT.upper()}
    outs = {punctuation(TEXT, rng) for _ in range(30)}
    assert outs <= {"How do I activate my new card, please", "How do I activate my new card please?"}
    assert punctuation("how do i pay", random.Random(1)) == "how do i pay?"  # the only change it can make


@settings(max_examples=50, deadline=None)
@given(words, st.floats(0.01, 1.0), st.integers(0, 1000))
def test_swap_keeps_the_words_and_dropout_keeps_two_thirds(text, rate, seed):
    swapped = word_swap(text, rate, random.Random(seed))
    assert Counter(swapped.split()) == Counter(text.split())
    dropped = word_dropout(text, rate, random.Random(seed)).split()
    n = len(text.split())
    if n < 4:
        assert dropped == text.split()
    else:
        assert n - max(1, n // 3) <= len(dropped) < n
        assert Counter(dropped) <= Counter(text.split())


def test_augment_keeps_provenance_and_skips_repeats():
    records = [{"text": TEXT, "label": "activate"}, {"text": "hi", "label": "greet"}]
    rows, report = augment(records, "classify", parse_methods("typo,dropout,swap"), row_numbers=[2, 3], copies=2)
    assert rows[0] == {"text": TEXT, "label": "activate", "source_id": 2, "method": "original"}
    assert {r["label"] for r in rows if r["source_id"] == 2} == {"activate"}
    texts = [r["text"] for r in rows]
    assert len(texts) == len(set(texts))  # no variant repeats another row
    # "hi" has too few words for dropout and swap, and no 3-letter word for a typo
    assert [r["method"] for r in rows if r["source_id"] == 3] == ["original"]
    assert report.rows_in == 2 and report.rows_out == len(rows)
    assert sum(report.skipped.values()) >= 6


def test_augment_without_originals():
    rows, _ = augment([{"text": TEXT, "label": "a"}], "classify", {"case": None}, keep_original=False)
    assert [r["method"] for r in rows] == ["case"]


def test_augment_chat_changes_user_turns_only():
    record = {"messages": [
        {"role": "system", "content": "Be brief and helpful."},
        {"role": "user", "content": "Where is my new card right now?"},
        {"role": "assistant", "content": "It arrives in three to five working days."},
    ]}
    rows, _ = augment([record], "chat", {"swap": 0.5})
    variant = rows[1]["messages"]
    assert variant[0] == record["messages"][0] and variant[2] == record["messages"][2]
    assert variant[1]["content"] != record["messages"][1]["content"]


def test_paraphrase_uses_the_teacher_and_filters_its_replies():
    replies = {  # keyed by the text to paraphrase
        "How do I activate my new card?": "Message: What are the steps to activate my new card?",
        "Where is my card?": "",
        "Why was my top-up declined?": "way " * 200,
        "Can I change my PIN at an ATM?": "Turtles are green and they like swimming in warm lakes.",
    }
    teacher = ScriptedTeacher(lambda m: replies[m[-1]["content"].rsplit("Message: ", 1)[1]])
    records = [{"text": t, "label": "x"} for t in replies]
    rows, report = augment(records, "classify", {"paraphrase": None}, teacher=teacher)
    para = [r for r in rows if r["method"] == "paraphrase"]
    assert [(r["text"], r["source_id"]) for r in para] == [("What are the steps to activate my new card?", 1)]
    assert report.skipped == {"paraphrase: empty": 1, "paraphrase: length far from the original": 1,
                              "paraphrase: meaning drifted (embedding cosine < 0.6)": 1}
    assert teacher.calls == 4
    with pytest.raises(ConfigError, match="needs a teacher"):
        augment(records, "classify", {"paraphrase": None})


def test_clean_line_strips_list_markers_prefixes_and_lead_ins():
    assert clean_line('1. "Can you help me top up?"\nmore') == "Can you help me top up?"
    assert clean_line("Here is a new message:\n- I lost my card") == "I lost my card"
    assert clean_line("New message: hello there") == "hello there"
    assert clean_line("In different words: my card is lost") == "my card is lost"
    assert clean_line("  \n ") == ""

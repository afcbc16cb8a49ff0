"""Tests for tunesmith.data.textcheck (language ID and lexicon toxicity flag)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tunesmith.data.textcheck import (
    code_spans,
    detect_language,
    language_mix,
    load_lexicon,
    looks_like_code,
    toxic_terms,
    word_count,
)

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "samples"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("I would like to activate my new card as soon as possible, please.", "en"),
        ("Ich möchte meine neue Karte so schnell wie möglich aktivieren.", "de"),
        ("Je voudrais activer ma nouvelle carte le plus vite possible.", "fr"),
        ("Quiero activar mi nueva tarjeta lo antes posible, por favor.", "es"),
    ],
)
def test_detect_language(text: str, code: str) -> None:
    assert detect_language(text) == code


@pytest.mark.parametrize("text", ["", "hi", "ok thanks", "12345 678", "  !!  "])
def test_detect_language_short_text_is_none(text: str) -> None:
    assert detect_language(text) is None


def test_language_mix() -> None:
    english = [
        f"Please tell me why my card payment number {i} was declined yesterday."
        for i in range(20)
    ]
    german = [
        "Warum wurde meine Kartenzahlung gestern abgelehnt?",
        "Ich habe mein Passwort vergessen und komme nicht mehr in mein Konto.",
        "Wie lange dauert eine Überweisung ins Ausland?",
    ]
    texts = (
        english[:5]
        + [german[0]]
        + english[5:12]
        + [german[1]]
        + english[12:]
        + [german[2]]
    )
    texts.append("ok")  # too short: undetermined, not another language
    mix = language_mix(texts)
    assert mix["main"] == "en"
    assert mix["counts"] == {"en": 20, "de": 3}
    assert mix["undetermined"] == 1
    assert mix["other_rows"] == [5, 13, 22]


def test_language_mix_empty() -> None:
    assert language_mix([]) == {
        "counts": {},
        "undetermined": 0,
        "main": None,
        "other_rows": [],
    }


def test_lexicon_is_modest_lower_case_and_precise() -> None:
    terms = load_lexicon()
    assert 60 <= len(terms) <= 120
    assert all(term == term.lower() for term in terms)
    for innocent in ("kill", "hate", "sex", "bloody", "damn", "ass"):
        assert innocent not in terms


def test_toxic_terms_case_and_punctuation() -> None:
    assert toxic_terms("You are a complete DICKHEAD!!!") == ["dickhead"]
    assert toxic_terms("what a (Scumbag), honestly") == ["scumbag"]
    assert toxic_terms("Bullshit. And you, Asshole?") == ["bullshit", "asshole"]


def test_toxic_terms_multi_word_and_apostrophes() -> None:
    assert toxic_terms("If you do that again I'LL   KILL\nYOU.") == ["i'll kill you"]
    assert toxic_terms("I’ll kill you") == ["i'll kill you"]  # typographic apostrophe
    assert toxic_terms("just go kill yourself") == ["go kill yourself"]  # longest wins


def test_toxic_terms_whole_words_only() -> None:
    # "shit" must not fire inside "shitake"-style words, nor "cunt" inside "Scunthorpe".
    assert toxic_terms("I ordered shitake mushrooms in Scunthorpe.") == []
    assert toxic_terms("The assistant in my class passed the assessment.") == []
    assert (
        toxic_terms("The skill you need is patience; it will not kill you to wait.")
        == []
    )


def test_toxic_terms_clean_banking_rows() -> None:
    with (SAMPLES / "banking77_train.csv").open(encoding="utf-8", newline="") as f:
        rows = [row["text"] for _, row in zip(range(300), csv.DictReader(f))]
    assert len(rows) == 300
    assert [row for row in rows if toxic_terms(row)] == []


def test_word_count_counts_cjk_characters() -> None:
    assert word_count("Yes") == 1
    assert word_count("我今天很高兴去公园散步。") == 11
    assert word_count("はい、とても元気です。") > 3


def test_code_spans_and_looks_like_code() -> None:
    assert looks_like_code("def f(x):\n    return x + 1\n")
    assert not looks_like_code("The answer is 42.\nIt is not 43.")
    assert not looks_like_code("<p>This is a sentence scraped from the web.</p>")
    text = "Use `key=str.lower` like this:\n```\nwords.sort(key=str.lower)\n```\n"
    assert [text[s:e] for s, e in code_spans(text)] == ["`key=str.lower`", "```\nwords.sort(key=str.lower)\n```"]
    assert code_spans("sorted(words, key=str.lower)", answer=True) == [(0, 28)]
    assert code_spans("sorted(words, key=str.lower)") == []


@pytest.mark.parametrize(
    "text",
    [
        "For questions, email jane@example.org",
        "If you like, call me back.",
        "# Steps\n* Open the app\n* Choose Security",
        "From my experience, return it within 30 days.",
        "Contact support (jane@example.org)",
    ],
)
def test_prose_is_not_code(text: str) -> None:
    assert not looks_like_code(text)
    assert code_spans(text, answer=True) == []

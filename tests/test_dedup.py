"""Duplicate, conflict and leakage findings (tunesmith.data.dedup)."""

from pathlib import Path

import pytest

from tunesmith.data.dedup import (
    Conflict,
    conflicting_answers,
    exact_duplicates,
    leakage,
    near_duplicates,
    normalize,
    record_prompt_answer,
    record_text,
)

SENTENCE = "the quick brown fox jumps over the lazy dog while the farmer sleeps under an oak"
# One word changed in the middle of 15 words touches 3 of 13 word 3-shingles: Jaccard
# 10/16 = 0.625, below the 0.85 default (module docstring), so these tests pass 0.5.
SENTENCE_EDIT = SENTENCE.replace("lazy", "sleepy")
NEAR_THRESHOLD = 0.5
# A 60-word text with one word changed stays far above the default: Jaccard 56/58 = 0.97.
PARAGRAPH = " ".join(f"word{i}" for i in range(60))
PARAGRAPH_EDIT = PARAGRAPH.replace("word30 ", "changed ")
UNRELATED = [
    "how do i reset my password for the online banking portal today",
    "please send me the quarterly report before the meeting on friday",
    "my card was declined at the supermarket even though i have money",
]


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def as_records(texts: list[str], task: str) -> list[dict]:
    if task == "chat":
        return [chat(t, "ok") for t in texts]
    if task == "classify":
        return [{"text": t, "label": "x"} for t in texts]
    return [{"text": t} for t in texts]


TASKS = ["chat", "classify", "pretrain"]


def test_normalize():
    assert normalize("  Where IS\tmy   card?! ") == "where is my card"
    assert normalize("ﬁne") == "fine"  # NFKC folds the ligature
    assert normalize("...") == ""


def test_record_text_and_prompt_answer_shapes():
    c = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "goodbye"},
        ]
    }
    prompt, answer = record_prompt_answer(c)
    assert answer == "goodbye" and "bye" in prompt and "hello" in prompt and "goodbye" not in prompt
    assert "goodbye" in record_text(c)
    assert record_prompt_answer({"text": "q", "label": "a"}) == ("q", "a")
    assert record_prompt_answer({"text": "just text"}) is None
    pref = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    assert record_prompt_answer(pref) is None
    assert "good" in record_text(pref) and "bad" in record_text(pref)
    kto = {
        "prompt": [{"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
        "label": True,
    }
    assert record_prompt_answer(kto) == ("user: q", "assistant: a")
    assert record_prompt_answer({"messages": [{"role": "user", "content": "no answer"}]}) is None


@pytest.mark.parametrize("task", TASKS)
def test_exact_duplicate_differing_in_case_and_whitespace(task):
    texts = [UNRELATED[0], SENTENCE, UNRELATED[1], "  The QUICK brown fox\n" + SENTENCE[20:].upper()]
    records = as_records(texts, task)
    rows = [2, 3, 4, 5]
    groups = exact_duplicates(records, rows)
    assert len(groups) == 1
    assert groups[0].rows == [3, 5] and groups[0].kind == "exact" and groups[0].similarity == 1.0
    # exact copies alone are not a near group
    assert near_duplicates(records, rows) == []


@pytest.mark.parametrize("task", TASKS)
def test_near_duplicate_one_word_changed(task):
    texts = [SENTENCE, *UNRELATED, SENTENCE_EDIT]
    rows = [10, 11, 12, 13, 14]
    groups = near_duplicates(as_records(texts, task), rows, threshold=NEAR_THRESHOLD)
    assert len(groups) == 1  # the unrelated rows are not grouped
    assert groups[0].rows == [10, 14] and groups[0].kind == "near"
    assert NEAR_THRESHOLD <= groups[0].similarity < 1.0
    assert exact_duplicates(as_records(texts, task), rows) == []
    assert near_duplicates(as_records(texts, task), rows) == []  # 0.625 < the 0.85 default


@pytest.mark.parametrize("task", TASKS)
def test_near_duplicate_long_text_at_default_threshold(task):
    texts = [PARAGRAPH, SENTENCE, *UNRELATED, PARAGRAPH_EDIT]
    groups = near_duplicates(as_records(texts, task), [1, 2, 3, 4, 5, 6])
    assert [g.rows for g in groups] == [[1, 6]]
    assert 0.85 <= groups[0].similarity < 1.0


def test_near_group_includes_exact_copies_of_members():
    texts = [*UNRELATED, SENTENCE, SENTENCE_EDIT, SENTENCE]
    groups = near_duplicates(as_records(texts, "pretrain"), [1, 2, 3, 4, 5, 6], threshold=NEAR_THRESHOLD)
    assert len(groups) == 1
    assert groups[0].rows == [4, 5, 6]
    assert groups[0].similarity >= NEAR_THRESHOLD


def test_near_duplicates_short_texts_use_character_shingles():
    texts = ["card not working", "card not workin", "transfer money abroad"]
    groups = near_duplicates(as_records(texts, "pretrain"), [1, 2, 3], threshold=0.7)
    assert [g.rows for g in groups] == [[1, 2]]


def test_conflict_same_question_different_labels():
    records = [
        {"text": "Where is my card?", "label": "card_arrival"},
        {"text": "Unrelated question", "label": "other"},
        {"text": "where is  my card", "label": "lost_card"},
    ]
    conflicts = conflicting_answers(records, [2, 3, 4])
    assert conflicts == [Conflict(prompt="where is my card", rows=[2, 4], answers=["card_arrival", "lost_card"])]


def test_no_conflict_for_same_question_same_label():
    records = [{"text": "Where is my card?", "label": "card_arrival"}, {"text": "where is my card", "label": "Card_Arrival"}]
    assert conflicting_answers(records, [2, 3]) == []


def test_chat_conflict_and_kto_conflict_on_label():
    records = [chat("What is 2+2?", "4"), chat("what is 2+2", "5"), chat("What is 3+3?", "6")]
    [conflict] = conflicting_answers(records, [1, 2, 3])
    assert conflict.rows == [1, 2] and conflict.answers == ["4", "5"]

    def kto(answer: str, label: bool) -> dict:
        return {
            "prompt": [{"role": "user", "content": "q"}],
            "completion": [{"role": "assistant", "content": answer}],
            "label": label,
        }

    # different completions for one prompt are normal in KTO; a flipped label is not
    assert conflicting_answers([kto("a", True), kto("b", False)], [1, 2]) == []
    [conflict] = conflicting_answers([kto("a", True), kto("a", False)], [1, 2])
    assert conflict.rows == [1, 2] and conflict.answers == ["True", "False"]


@pytest.mark.parametrize("task", TASKS)
def test_leakage_exact_and_near(task):
    train = as_records([*UNRELATED, SENTENCE], task)
    train_rows = [2, 3, 4, 5]
    test_texts = [
        "an entirely different question about mortgage rates and fees",
        UNRELATED[1].upper() + "  ",  # exact (after normalisation)
        SENTENCE_EDIT,  # near
    ]
    found = leakage(train, as_records(test_texts, task), [7, 8, 9], NEAR_THRESHOLD, train_rows=train_rows)
    assert found["exact"] == [8]
    assert len(found["near"]) == 1
    other_row, train_row, similarity = found["near"][0]
    assert (other_row, train_row) == (9, 5) and NEAR_THRESHOLD <= similarity < 1.0


def test_leakage_compares_prompts_not_answers():
    train = [{"text": "where is my card", "label": "card_arrival"}]
    test = [{"text": "Where is my card?", "label": "lost_card"}]  # same prompt, other label
    assert leakage(train, test, [2])["exact"] == [2]
    # without train_rows the train "row" is the index into train
    found = leakage([chat(PARAGRAPH, "a")], [chat(PARAGRAPH_EDIT, "b")], [4])
    assert found["exact"] == [] and [(r, t) for r, t, _ in found["near"]] == [(4, 0)]


def test_empty_inputs():
    assert exact_duplicates([], []) == []
    assert near_duplicates([], []) == []
    assert conflicting_answers([], []) == []
    assert leakage([], [], []) == {"exact": [], "near": []}
    assert leakage([{"text": "a b c"}], [], []) == {"exact": [], "near": []}
    assert leakage([], [{"text": "a b c"}], [1]) == {"exact": [], "near": []}


def test_mismatched_rows_and_bad_threshold_are_errors():
    with pytest.raises(ValueError, match="row numbers"):
        exact_duplicates([{"text": "a"}], [])
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates([{"text": "a"}], [1], threshold=0)


BANKING77 = Path(__file__).parents[1].parent / "shared" / "data" / "banking77"


@pytest.mark.skipif(not (BANKING77 / "train.csv").exists(), reason="Banking77 data not present")
def test_banking77_real_data():
    from tunesmith.data.formats import load_data

    train = load_data(BANKING77 / "train.csv")
    test = load_data(BANKING77 / "test.csv")
    assert train.task == "classify"
    exact = exact_duplicates(train.records, train.rows)
    near = near_duplicates(train.records, train.rows)
    conflicts = conflicting_answers(train.records, train.rows)
    leaks = leakage(train.records, test.records, test.rows, train_rows=train.rows)
    print(
        f"\nbanking77: {len(train.records)} train rows, {len(test.records)} test rows; "
        f"exact dup groups {len(exact)} ({sum(len(g.rows) for g in exact)} rows), "
        f"near dup groups {len(near)} ({sum(len(g.rows) for g in near)} rows), "
        f"conflicts {len(conflicts)}, leakage exact {len(leaks['exact'])} near {len(leaks['near'])}"
    )
    for g in exact[:3] + near[:3]:
        print(" ", g.kind, g.rows, round(g.similarity, 3))
    for c in conflicts[:3]:
        print("  conflict", c.rows, c.answers, c.prompt[:80])
    for row, train_row, sim in leaks["near"][:3]:
        print("  near leak", row, train_row, round(sim, 3))
    assert all(len(g.rows) >= 2 for g in exact + near)
    assert set(leaks["exact"]) <= set(test.rows)

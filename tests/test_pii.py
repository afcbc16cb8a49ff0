"""Tests for tunesmith.data.pii (PII detection and redaction for the data quality gate)."""

import csv
import itertools
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunesmith.data.pii import PLACEHOLDERS, PiiMatch, find_pii, redact

BANKING = (
    Path(__file__).parents[1] / "src" / "tunesmith" / "samples" / "banking77_train.csv"
)

GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5" * 3 + "f6G7h8"  # 36 chars after the prefix
GITHUB_PAT = "github_pat_11ABCDEFG0abcdefghij_klmnopqrstuv"
GOOGLE_KEY = "AIzaSyD" + "x1Y2z3W4v5" * 3 + "ab"  # AIza + 35
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "-----END RSA PRIVATE KEY-----"
)

# (sentence with the PII, the PII itself, its kind)
POSITIVES = [
    (
        "Please email me at john.doe+bank@example.co.uk.",
        "john.doe+bank@example.co.uk",
        "email",
    ),
    ("You can call me on +44 20 7946 0958 after six.", "+44 20 7946 0958", "phone"),
    ("My number is (415) 555-2671, thanks.", "(415) 555-2671", "phone"),
    ("Ring 415-555-2671 if the transfer fails.", "415-555-2671", "phone"),
    ("Our office line is 020 7946 0958 today.", "020 7946 0958", "phone"),
    ("Text +14155552671 when done.", "+14155552671", "phone"),
    ("My card 4111 1111 1111 1111 was declined.", "4111 1111 1111 1111", "card"),
    ("Charge 5500-0000-0000-0004 instead.", "5500-0000-0000-0004", "card"),
    ("Amex 3782 822463 10005 is blocked.", "3782 822463 10005", "card"),
    ("Refund to 4012888888881881 please.", "4012888888881881", "card"),
    (
        "Send it to GB82 WEST 1234 5698 7654 32 by Friday.",
        "GB82 WEST 1234 5698 7654 32",
        "iban",
    ),
    ("IBAN: DE89370400440532013000.", "DE89370400440532013000", "iban"),
    ("My SSN is 123-45-6789, is it safe?", "123-45-6789", "ssn"),
    ("Login from 192.168.1.10 was blocked.", "192.168.1.10", "ip"),
    (
        "Server at 2001:db8:85a3::8a2e:370:7334 timed out.",
        "2001:db8:85a3::8a2e:370:7334",
        "ip",
    ),
    (
        "Full form 2001:0db8:85a3:0000:0000:8a2e:0370:7334 here.",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "ip",
    ),
    ("Link-local fe80::1ff:fe23:4567:890a seen.", "fe80::1ff:fe23:4567:890a", "ip"),
    ("The key AKIAIOSFODNN7EXAMPLE leaked.", "AKIAIOSFODNN7EXAMPLE", "secret"),
    (f"Token {GITHUB_TOKEN} in the log.", GITHUB_TOKEN, "secret"),
    (f"Use {GITHUB_PAT} now.", GITHUB_PAT, "secret"),
    (
        "export sk-proj-4f9a8B7c6D5e4F3g2H1i0J here",
        "sk-proj-4f9a8B7c6D5e4F3g2H1i0J",
        "secret",
    ),
    (
        "slack xoxb-123456789012-abcdefABCDEF ok",
        "xoxb-123456789012-abcdefABCDEF",
        "secret",
    ),
    (f"maps key {GOOGLE_KEY} ok", GOOGLE_KEY, "secret"),
    (f"Bearer {JWT} sent", JWT, "secret"),
    (f"key:\n{PEM}\nend", PEM, "secret"),
    ("DB_PASSWORD=hunter2hunter2! in .env", "hunter2hunter2!", "secret"),
    ('config api_key: "abc123xyz789" set', "abc123xyz789", "secret"),
    ("client_secret = s3cr3t-v4lue.", "s3cr3t-v4lue", "secret"),
]


@pytest.mark.parametrize(("sentence", "pii", "kind"), POSITIVES)
def test_detects_and_redacts_each_kind(sentence, pii, kind):
    matches = find_pii(sentence)
    assert matches == [
        PiiMatch(kind, sentence.index(pii), sentence.index(pii) + len(pii), pii)
    ]
    redacted, replaced = redact(sentence)
    assert redacted == sentence.replace(pii, PLACEHOLDERS[kind])
    assert replaced == matches


def test_placeholders_cover_every_kind():
    assert PLACEHOLDERS == {
        "email": "[EMAIL]",
        "phone": "[PHONE]",
        "card": "[CARD]",
        "iban": "[IBAN]",
        "ssn": "[SSN]",
        "ip": "[IP]",
        "secret": "[SECRET]",
    }


@pytest.mark.parametrize(
    "text",
    [
        "My card 4111 1111 1111 1112 was declined.",  # Luhn-invalid
        "Refund to 4012888888881882 please.",  # Luhn-invalid
        "Send it to GB82 WEST 1234 5698 7654 33 by Friday.",  # bad mod-97
        "Send it to GB83 WEST 1234 5698 7654 32 by Friday.",  # bad check digits
        "My SSN is 000-12-3456.",  # area 000
        "My SSN is 666-12-3456.",  # area 666
        "My SSN is 912-34-5678.",  # area 9xx
        "My SSN is 123-00-4567.",  # group 00
        "My SSN is 123-45-0000.",  # serial 0000
        "Login from 999.1.1.1 was blocked.",  # octet > 255
        "Login from 192.168.1.256 was blocked.",
        "AKIA1234 is too short to be a key.",
        "sk-learn-is-a-python-library-name here",  # no digits: a slug, not a key
    ],
)
def test_rejects_invalid_checksums_and_ranges(text):
    assert find_pii(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "I was charged £1,250.00 twice.",
        "The transfer of $1,000,000.00 is pending.",
        "I paid 1000000 last year.",
        "It happened on 2024-01-15 and again on 15/01/2024.",
        "The payment left at 12:30:45 and arrived 2024-01-15T12:30:45Z.",
        "Update the app to v1.2.3 or 1.2.3.4.5.",
        "My PIN is 123456.",
        "Order 12345678 was shipped in 2023.",
        "Order id 20240115123045 failed.",  # 14 digits, Luhn-invalid
        "MAC 00:1A:2B:3C:4D:5E is not an IP.",
        "Use std::vector in C++.",
        "The ratio was 3:2:1 at 10:30.",
        "Password: incorrect",
        "The monkey=1234567890 line is fine.",
        "My keyboard: logitech-keys",
        "Your reference is 0000 1234 5678.",
    ],
)
def test_ordinary_text_is_not_flagged(text):
    assert find_pii(text) == []


def test_banking_sample_is_clean():
    with BANKING.open(newline="", encoding="utf-8") as f:
        texts = [
            row["text"] for row, _ in zip(csv.DictReader(f), range(300), strict=False)
        ]
    assert len(texts) == 300
    flagged = {t: find_pii(t) for t in texts if find_pii(t)}
    assert flagged == {}


def test_card_is_reported_once_as_card():
    text = "Card 4111111111111111 and 4111 1111 1111 1111."
    assert [m.kind for m in find_pii(text)] == ["card", "card"]


def test_rejected_long_run_does_not_hide_the_card_after_it():
    # The grouped-card regex first grabs "2671 4111 1111 1111 1111" (20 digits).
    text = "(415) 555-2671 4111 1111 1111 1111"
    assert [(m.kind, m.text) for m in find_pii(text)] == [
        ("phone", "(415) 555-2671"),
        ("card", "4111 1111 1111 1111"),
    ]


def test_card_followed_by_a_year_is_trimmed():
    assert (
        redact("Card 4111 1111 1111 1111 2024 expires")[0] == "Card [CARD] 2024 expires"
    )


def test_iban_wins_over_card_and_phone_inside_it():
    text = "IBAN GB29 NWBK 6016 1331 9268 19 thanks"
    assert [m.kind for m in find_pii(text)] == ["iban"]


def test_several_kinds_in_one_row_keep_order_and_text():
    text = "Mail a@b.io, call 415-555-2671, card 4111111111111111."
    redacted, matches = redact(text)
    assert redacted == "Mail [EMAIL], call [PHONE], card [CARD]."
    assert [m.kind for m in matches] == ["email", "phone", "card"]
    assert all(text[m.start : m.end] == m.text for m in matches)


def test_redacted_placeholders_do_not_match():
    for placeholder in PLACEHOLDERS.values():
        assert find_pii(f"password = {placeholder} and token: {placeholder}") == []


def test_fast_on_many_rows_and_long_adversarial_text():
    rows = [s for s, _, _ in POSITIVES] * 100 + [
        "I need my card to be activated now."
    ] * 3000
    evil = [
        "1-" * 5000,
        "1 " * 5000,
        "4111 " * 4000,
        "1" * 20000,
        "1." * 5000,
        "a" * 20000 + "@",
        "-" * 10000 + "x",
        "a-" * 5000 + "=",
        ":" * 10000,
    ]
    start = time.perf_counter()
    for row in rows + evil:
        find_pii(row)
    assert time.perf_counter() - start < 2.0


@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_find_pii_is_safe_on_any_text_and_redact_is_complete(text):
    matches = find_pii(text)
    for m in matches:
        assert 0 <= m.start < m.end <= len(text)
        assert text[m.start : m.end] == m.text
        assert m.kind in PLACEHOLDERS
    for a, b in itertools.pairwise(matches):
        assert a.end <= b.start
    redacted, _ = redact(text)
    assert find_pii(redacted) == []


# Rows built from known PII and separator-ish filler, joined the way real text is (by
# commas, words or line breaks). Glued or space-only joins are ambiguous on purpose:
# "…co.uk+44 20…" hides the phone behind a word character, and in "+44 20 7946 0958 415
# 555 2671" nothing says where one number ends.
PII_PIECES = st.sampled_from(
    [s for _, s, _ in POSITIVES]
    + ["-", ".", ":", "=", "+", "0", "7", "a", "password ="]
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(PII_PIECES, max_size=12), st.sampled_from([", ", "\n", " and "]))
def test_redact_leaves_no_pii_behind(pieces, sep):
    text = sep.join(pieces)
    redacted, matches = redact(text)
    assert find_pii(redacted) == []
    assert redacted.count("[") - text.count("[") == len(matches)


def test_code_spans_hold_no_pii_but_distinctive_secrets_still_count():
    text = "Call sorted(words, key=str.lower) or mail a@b.org"
    assert [m.kind for m in find_pii("Use key=str.lower to sort.")] == []
    code = [(5, 33)]
    assert [m.kind for m in find_pii(text, code)] == ["email"]
    assert [m.kind for m in find_pii("aws = 'AKIAIOSFODNN7EXAMPLE'", [(0, 28)])] == ["secret"]
    assert redact("x = 'jane@corp.com'", [(0, 19)]) == ("x = 'jane@corp.com'", [])

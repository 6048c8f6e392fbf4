"""The PII engine: accuracy on the labelled corpus (issue 3 targets), configuration, offline-ness."""

from __future__ import annotations

import itertools
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.pii.engine import DEFAULT_ENTITIES, SUPPORTED_ENTITIES, Detector, PiiConfig, Span
from sidecar.pii.evaluate import OVERALL, evaluate, format_table, load_corpus

CORPUS = Path(__file__).parent / "data" / "pii_corpus.jsonl"
HOLDOUT = Path(__file__).parent / "data" / "pii_holdout.jsonl"
PATTERN_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")


@pytest.fixture(scope="module")
def detectors() -> dict[str, Detector]:
    out = {}
    for mode in ("patterns", "ner"):
        out[mode] = Detector(PiiConfig(mode=mode))
        out[mode].warm_up()
    return out


def _config(tmp_path: Path, body: str, mode: str = "patterns", threshold: float = 0.35) -> PiiConfig:
    path = tmp_path / "pii.yaml"
    path.write_text(body, encoding="utf-8")
    return PiiConfig.load(mode, threshold, str(path))


def _found(detector: Detector, text: str) -> list[tuple[str, str]]:
    return [(s.entity, text[s.start : s.end]) for s in detector.analyze(text)]


# --- accuracy ---------------------------------------------------------------------------------


def test_corpus_is_large_and_varied() -> None:
    rows = load_corpus(CORPUS)
    assert len(rows) >= 80
    assert sum(1 for r in rows if not r.spans) >= 25  # tricky negatives
    kinds = {s.entity for r in rows for s in r.spans}
    assert set(PATTERN_ENTITIES) | {"PERSON", "LOCATION"} <= kinds


def test_ner_mode_meets_targets(detectors: dict[str, Detector], capsys: pytest.CaptureFixture[str]) -> None:
    scores = evaluate(detectors["ner"], CORPUS)
    with capsys.disabled():
        print("\n" + format_table(scores, "PII corpus, mode=ner"))
    for entity in PATTERN_ENTITIES:
        assert scores[entity]["recall"] >= 0.95, (entity, scores[entity])
        assert scores[entity]["precision"] >= 0.9, (entity, scores[entity])
    assert scores["PERSON"]["recall"] >= 0.85, scores["PERSON"]
    assert scores["PERSON"]["precision"] >= 0.9, scores["PERSON"]
    assert scores[OVERALL]["precision"] >= 0.9, scores[OVERALL]
    # LOCATION has no target (addresses are weak in every setup); keep it from regressing badly.
    assert scores["LOCATION"]["recall"] >= 0.7 and scores["LOCATION"]["precision"] >= 0.8


def test_patterns_mode_meets_targets(
    detectors: dict[str, Detector], capsys: pytest.CaptureFixture[str]
) -> None:
    scores = evaluate(detectors["patterns"], CORPUS)
    with capsys.disabled():
        print("\n" + format_table(scores, "PII corpus, mode=patterns"))
    for entity in PATTERN_ENTITIES:
        assert scores[entity]["recall"] >= 0.95, (entity, scores[entity])
        assert scores[entity]["precision"] >= 0.9, (entity, scores[entity])
    assert scores[OVERALL]["precision"] >= 0.9
    # No NER in this mode: only names after an honorific, greeting or sign-off are found.
    assert scores["PERSON"]["precision"] >= 0.9


@pytest.mark.parametrize("mode", ["patterns", "ner"])
def test_holdout_set_is_reported(
    detectors: dict[str, Detector], mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sentences not used for tuning: an honest estimate, printed; only a loose floor is asserted."""
    scores = evaluate(detectors[mode], HOLDOUT)
    with capsys.disabled():
        print("\n" + format_table(scores, f"PII held-out set, mode={mode}"))
    assert scores[OVERALL]["precision"] >= 0.9
    for entity in ("EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS"):
        assert scores[entity]["recall"] == 1.0, (entity, scores[entity])


@pytest.mark.parametrize("mode", ["patterns", "ner"])
def test_spans_are_sorted_disjoint_and_above_threshold(detectors: dict[str, Detector], mode: str) -> None:
    for row in load_corpus(CORPUS):
        spans = detectors[mode].analyze(row.text)
        for a, b in itertools.pairwise(spans):
            assert a.end <= b.start, (row.text, a, b)
        assert all(s.score >= 0.35 and 0 <= s.start < s.end <= len(row.text) for s in spans)


def test_overlaps_keep_the_best_span(tmp_path: Path) -> None:
    detector = Detector(_config(tmp_path, "entities: [EMAIL_ADDRESS, URL, PERSON]\n", mode="ner"))
    text = "Write to John Smith at john.smith@example.com or see https://example.com/docs today."
    assert _found(detector, text) == [
        ("PERSON", "John Smith"),
        ("EMAIL_ADDRESS", "john.smith@example.com"),  # no URL "example.com", no PERSON inside
        ("URL", "https://example.com/docs"),
    ]


def test_negative_context_and_allow_list_defaults(detectors: dict[str, Detector]) -> None:
    ner = detectors["ner"]
    assert _found(ner, "Your order number 555-201-3344 shipped; upgrade to version 10.2.3.4.") == []
    assert _found(ner, "Call me on 415-555-0132 about order 7781.") == [("PHONE_NUMBER", "415-555-0132")]
    assert _found(ner, "Use Grafana and Prometheus on EKS; pay by Mastercard.") == []


def test_long_texts_are_chunked_without_losing_entities(detectors: dict[str, Detector]) -> None:
    detector = detectors["patterns"]
    rows = [r for r in load_corpus(CORPUS) if r.spans]
    parts, labelled, separate, pos = [], set(), set(), 0
    while pos < 70_000:
        for row in rows:
            parts.append(row.text)
            labelled |= {
                (s.entity, s.start + pos, s.end + pos) for s in row.spans if s.entity in PATTERN_ENTITIES
            }
            separate |= {(s.entity, s.start + pos, s.end + pos) for s in detector.analyze(row.text)}
            pos += len(row.text) + 1
    text = "\n".join(parts)
    assert detector.config.chunk_chars < len(text) // 3
    found = {(s.entity, s.start, s.end) for s in detector.analyze(text)}
    assert labelled <= found
    assert found == separate  # chunk seams change nothing


@pytest.mark.parametrize("mode", ["patterns", "ner"])
def test_batch_analysis_equals_one_by_one(detectors: dict[str, Detector], mode: str) -> None:
    texts = [*(r.text for r in load_corpus(CORPUS)[:60]), "", "  ", "x" * 25_000 + " ana@example.com"]
    assert detectors[mode].analyze_batch(texts) == [detectors[mode].analyze(t) for t in texts]


def test_empty_and_blank_text(detectors: dict[str, Detector]) -> None:
    assert detectors["ner"].analyze("") == []
    assert detectors["patterns"].analyze("   \n ") == []


# --- offline ----------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts


def test_detectors_never_touch_the_network(
    no_network: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tldextract
    import tldextract.tldextract as tld

    # Control: a stock extractor with an empty cache does try to fetch the Public Suffix List.
    monkeypatch.setattr(tld, "TLD_EXTRACTOR", tldextract.TLDExtract(cache_dir=str(tmp_path / "psl")))
    tldextract.extract("someone@example.com")
    assert no_network, "the socket guard did not see tldextract's fetch"
    no_network.clear()

    monkeypatch.setattr(tld, "TLD_EXTRACTOR", tldextract.TLDExtract(cache_dir=str(tmp_path / "psl2")))
    text = "Mail ana.silva@example.com.br or jan@firma.de, call +44 20 7946 0958, Ana Silva in Lisbon."
    for mode in ("patterns", "ner"):
        detector = Detector(PiiConfig(mode=mode))
        detector.warm_up()
        found = _found(detector, text)
        assert ("EMAIL_ADDRESS", "ana.silva@example.com.br") in found
        assert ("EMAIL_ADDRESS", "jan@firma.de") in found
    assert no_network == []
    assert tld.TLD_EXTRACTOR.suffix_list_urls == ()
    assert not tld.TLD_EXTRACTOR._cache.enabled  # nothing written to a cache directory
    assert not (tmp_path / "psl2").exists()


# --- configuration ----------------------------------------------------------------------------


def test_defaults_and_no_file() -> None:
    config = PiiConfig.load("ner", 0.35, None)
    assert config == PiiConfig()
    assert config.entities == DEFAULT_ENTITIES


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("- just\n- a list\n", "top level must be a mapping"),
        ("entities: [EMAIL_ADDRESS\n", "invalid YAML"),
        ("entitys: [EMAIL_ADDRESS]\n", "unknown keys ['entitys']"),
        ("entities: EMAIL_ADDRESS\n", "entities must be a list"),
        ("entities: [email]\n", "not an entity name"),
        ("entities: [FAVOURITE_COLOUR]\n", "'FAVOURITE_COLOUR' has no recognizer"),
        ("allow_list: [1, 2]\n", "allow_list must be a list of non-empty strings"),
        ("default_allow_list: maybe\n", "default_allow_list must be true or false"),
        ("phone_regions: [USA]\n", "not an ISO 3166"),
        ("recognizers: {name: x}\n", "recognizers must be a list"),
        ("recognizers: [oops]\n", "recognizers[0] must be a mapping"),
        ("recognizers: [{entity: EMP_ID, deny_list: [a]}]\n", "name must be a non-empty string"),
        ("recognizers: [{name: emp, entity: emp-id, deny_list: [a]}]\n", "entity must be an upper-case"),
        ("recognizers: [{name: emp, entity: EMP_ID}]\n", "needs at least one of patterns or deny_list"),
        ("recognizers: [{name: emp, entity: EMP_ID, patterns: [{regex: '(EMP'}]}]\n", "invalid regex"),
        ("recognizers: [{name: emp, entity: EMP_ID, patterns: [{regex: 'E', score: 2}]}]\n", "score must be"),
        ("recognizers: [{name: emp, entity: EMP_ID, patterns: ['E\\d+']}]\n", "mapping with keys regex"),
        (
            "recognizers: [{name: emp, entity: EMP_ID, deny_list: [a], colour: red}]\n",
            "unknown keys ['colour']",
        ),
        (
            "recognizers: [{name: a, entity: X_ID, deny_list: [x]}, {name: a, entity: Y_ID, deny_list: [y]}]\n",
            "duplicate names",
        ),
    ],
)
def test_malformed_config_files_are_rejected(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ValueError, match="pii config") as info:
        _config(tmp_path, body)
    assert message in str(info.value)


def test_bad_mode_threshold_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        PiiConfig.load("regex", 0.35, None)
    with pytest.raises(ValueError, match="score_threshold"):
        PiiConfig.load("ner", 1.5, None)
    with pytest.raises(ValueError, match="cannot read"):
        PiiConfig.load("ner", 0.35, str(tmp_path / "absent.yaml"))


def test_allow_list_from_config(tmp_path: Path) -> None:
    config = _config(tmp_path, "allow_list: [noreply@example.com, 10.0.0.1]\n")
    detector = Detector(config)
    text = "From noreply@example.com (10.0.0.1) to ana@example.com (10.0.0.2)."
    assert _found(detector, text) == [("EMAIL_ADDRESS", "ana@example.com"), ("IP_ADDRESS", "10.0.0.2")]
    assert "Mastercard" in config.effective_allow_list
    plain = _config(tmp_path, "default_allow_list: false\n")
    assert "Mastercard" not in plain.effective_allow_list


RECOGNIZERS_YAML = r"""
entities: [EMAIL_ADDRESS, PERSON]
recognizers:
  - name: employee-id
    entity: EMPLOYEE_ID
    patterns:
      - {regex: '\bEMP-\d{6}\b', score: 0.9}
      - {regex: '\b\d{6}\b', score: 0.1}
    context: [employee, badge]
  - name: codenames
    entity: PROJECT_CODENAME
    deny_list: [Bluebird, Night Jar]
"""


@pytest.mark.parametrize("mode", ["patterns", "ner"])
def test_custom_regex_and_deny_list_recognizers(tmp_path: Path, mode: str) -> None:
    config = _config(tmp_path, RECOGNIZERS_YAML, mode=mode)
    assert config.detected_entities == {"EMAIL_ADDRESS", "PERSON", "EMPLOYEE_ID", "PROJECT_CODENAME"}
    detector = Detector(config)
    text = "Ref 123456 was filed yesterday afternoon. Badge EMP-004211 works on bluebird and NIGHT JAR; employee 654321."
    assert _found(detector, text) == [
        ("EMPLOYEE_ID", "EMP-004211"),
        ("PROJECT_CODENAME", "bluebird"),  # deny lists match whole words in any case
        ("PROJECT_CODENAME", "NIGHT JAR"),
        ("EMPLOYEE_ID", "654321"),  # weak pattern, lifted over the threshold by its context word
    ]
    assert _found(detector, "Call 212-867-5309 about Bluebirds.") == []  # PHONE_NUMBER not configured


def test_fingerprint_is_stable_and_tracks_what_changes_results(tmp_path: Path) -> None:
    base = _config(tmp_path, RECOGNIZERS_YAML)
    assert base.fingerprint() == _config(tmp_path, RECOGNIZERS_YAML).fingerprint()
    assert pickle.loads(pickle.dumps(base)) == base
    assert pickle.loads(pickle.dumps(base)).fingerprint() == base.fingerprint()
    reordered = RECOGNIZERS_YAML.replace("[EMAIL_ADDRESS, PERSON]", "[PERSON, EMAIL_ADDRESS]")
    assert _config(tmp_path, reordered).fingerprint() == base.fingerprint()

    variants = [
        _config(tmp_path, RECOGNIZERS_YAML, mode="ner"),
        _config(tmp_path, RECOGNIZERS_YAML, threshold=0.5),
        _config(tmp_path, RECOGNIZERS_YAML.replace("[EMAIL_ADDRESS, PERSON]", "[EMAIL_ADDRESS]")),
        _config(tmp_path, RECOGNIZERS_YAML + "allow_list: [EMP-000001]\n"),
        _config(tmp_path, RECOGNIZERS_YAML + "default_allow_list: false\n"),
        _config(tmp_path, RECOGNIZERS_YAML + "phone_regions: [US]\n"),
        _config(tmp_path, RECOGNIZERS_YAML.replace(r"\d{6}\b', score: 0.9", r"\d{7}\b', score: 0.9")),
        _config(tmp_path, RECOGNIZERS_YAML.replace("Night Jar", "Nightjar")),
        _config(tmp_path, RECOGNIZERS_YAML.replace("[employee, badge]", "[employee]")),
    ]
    prints = {v.fingerprint() for v in variants}
    assert len(prints) == len(variants) and base.fingerprint() not in prints


@pytest.mark.parametrize("mode", ["patterns", "ner"])
def test_every_supported_entity_can_be_enabled(mode: str) -> None:
    detector = Detector(PiiConfig(mode=mode, entities=tuple(sorted(SUPPORTED_ENTITIES))))
    text = "Acme Corp paid Jane Doe on 3 March 2024; see https://acme.example.com/x from 00:1A:2B:3C:4D:5E."
    found = {entity for entity, _ in _found(detector, text)}
    assert {"URL", "MAC_ADDRESS"} <= found
    if mode == "ner":
        assert {"PERSON", "DATE_TIME", "ORGANIZATION"} <= found


def test_span_is_a_small_frozen_value() -> None:
    span = Span("EMAIL_ADDRESS", 1, 5, 0.9)
    assert pickle.loads(pickle.dumps(span)) == span
    with pytest.raises(AttributeError):
        span.start = 2  # type: ignore[misc]

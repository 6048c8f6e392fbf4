from pathlib import Path

import pytest

from sidecar import config
from sidecar.config import ConfigError


def test_defaults_follow_the_spec(tmp_path: Path) -> None:
    s = config.load(environ={"SIDECAR_STATIC_KEYS_FILE": "keys.json"})
    assert (s.host, s.port, s.admin_port) == ("127.0.0.1", 8080, 8081)
    assert s.upstream_url == "https://api.openai.com"
    assert s.decision_path == "sidecar/decision" and s.opa_url == "" and s.redis_url == ""
    assert s.auth_mode == "static" and s.audit_log == "-" and s.fail_mode == "closed"
    assert Path(s.bundle).resolve() == (Path(__file__).parents[1] / "rego").resolve()


def test_environment_wins_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(
        "port: 9000\nupstream_url: http://file\nSIDECAR_FAIL_MODE: open\nstatic_keys_file: k.json\n"
    )
    s = config.load(str(cfg), environ={"SIDECAR_PORT": "9100"})
    assert s.port == 9100 and s.upstream_url == "http://file" and s.fail_open


def test_key_file_is_read(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    env = {"SIDECAR_UPSTREAM_API_KEY_FILE": str(key), "SIDECAR_STATIC_KEYS_FILE": "k"}
    s = config.load(environ=env)
    assert s.provider_key() == "sk-from-file"
    assert "sk-from-file" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIDECAR_AUTH_MODE": "magic"}, "SIDECAR_AUTH_MODE"),
        ({"SIDECAR_FAIL_MODE": "sometimes", "SIDECAR_STATIC_KEYS_FILE": "k"}, "SIDECAR_FAIL_MODE"),
        ({}, "SIDECAR_STATIC_KEYS_FILE"),
        ({"SIDECAR_PORT": "eighty", "SIDECAR_STATIC_KEYS_FILE": "k"}, "port"),
        (
            {"SIDECAR_INPUT_HEADERS": "x-tenant-id,authorization", "SIDECAR_STATIC_KEYS_FILE": "k"},
            "credentials",
        ),
        (
            {"SIDECAR_UPSTREAM_API_KEY_FILE": "/nonexistent", "SIDECAR_STATIC_KEYS_FILE": "k"},
            "does not exist",
        ),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(environ=env)


def test_unknown_file_setting_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text("prot: 80\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        config.load(str(cfg), environ={})


@pytest.mark.parametrize("word", ["ture", "enabled", "2", ""])
def test_an_invalid_boolean_is_reported_not_read_as_false(word: str) -> None:
    with pytest.raises(ConfigError, match=r"SIDECAR_BUNDLE_WATCH|bundle_watch"):
        config.load(environ={"SIDECAR_STATIC_KEYS_FILE": "k", "SIDECAR_BUNDLE_WATCH": word})


@pytest.mark.parametrize(("word", "value"), [("off", False), ("NO", False), ("On", True), ("1", True)])
def test_boolean_words(word: str, value: bool) -> None:
    s = config.load(environ={"SIDECAR_STATIC_KEYS_FILE": "k", "SIDECAR_BUNDLE_WATCH": word})
    assert s.bundle_watch is value


def test_a_misspelled_variable_is_reported_with_the_closest_name() -> None:
    env = {"SIDECAR_UPSTREM_URL": "x", "SIDECAR_PORT": "1", "SIDECAR_CACHE_DIR": "/c", "SIDECAR_ZZZZZZ": "1"}
    assert config.unknown_variables(env) == [
        ("SIDECAR_UPSTREM_URL", "SIDECAR_UPSTREAM_URL"),
        ("SIDECAR_ZZZZZZ", None),
    ]

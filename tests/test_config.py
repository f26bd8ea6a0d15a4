import os

import pytest

import ldw
from ldw.config import load_settings, parse_bytes, parse_duration
from ldw.secrets import Secret, redact


def test_parse_sizes_and_durations():
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes(1024) == 1024
    assert parse_duration("8h") == 28800
    assert parse_duration("90s") == 90
    assert parse_duration(None) is None
    with pytest.raises(ldw.ConfigError, match="as a size"):
        parse_bytes("lots")
    with pytest.raises(ldw.ConfigError, match="as a duration"):
        parse_duration("soon")


def test_precedence_arguments_over_env_over_file(tmp_path, monkeypatch):
    config = tmp_path / "ldw.toml"
    config.write_text('[server]\nmemory_limit = "1GiB"\nshm_dir = "/tmp/from-file"\n'
                      '[sources.lite]\nurl = "sqlite:///x.db"\n')
    monkeypatch.setenv("LDW_MEMORY_LIMIT", "2GiB")
    settings = load_settings(str(config))
    assert settings.memory_limit == 2 * 2**30
    assert str(settings.shm_dir) == "/tmp/from-file"
    assert load_settings(str(config), memory_limit="3GiB").memory_limit == 3 * 2**30
    monkeypatch.setenv("LDW_CONFIG", str(config))
    assert "lite" in load_settings().sources


def test_inline_password_is_refused_without_echoing_it():
    with pytest.raises(ldw.ConfigError) as info:
        load_settings({"sources": {"dwh": {"url": "postgresql://bob:hunter2@db/prod"}}})
    assert "hunter2" not in str(info.value)
    assert "password_env" in str(info.value)


def test_password_from_env_is_a_secret(monkeypatch):
    settings = load_settings({"sources": {"dwh": {"url": "postgresql://bob@db/prod",
                                                    "password_env": "DWH_PW"}}})
    source = settings.source("dwh")
    with pytest.raises(ldw.ConfigError, match=r"\$DWH_PW"):
        source.password()
    monkeypatch.setenv("DWH_PW", "s3cr3t-canary")
    secret = source.password()
    assert secret.reveal() == "s3cr3t-canary"
    for text in (str(secret), repr(secret), f"{secret}", repr(source), source.safe_url()):
        assert "s3cr3t-canary" not in text


def test_unknown_source_and_keys_are_named():
    settings = load_settings({"sources": {"a": {"url": "sqlite:///a.db"}}})
    with pytest.raises(ldw.UnknownSource, match="'nope'.*known: a"):
        settings.source("nope")
    with pytest.raises(ldw.ConfigError, match="unknown"):
        load_settings({"server": {"memroy_limit": "1GiB"}})
    with pytest.raises(ldw.ConfigError, match="url"):
        load_settings({"sources": {"a": {"password_env": "X"}}})
    with pytest.raises(ldw.ConfigError, match="does not exist"):
        load_settings("/nonexistent/ldw.toml")


def test_source_timeout_is_a_positive_duration():
    settings = load_settings({"sources": {"a": {"url": "sqlite:///a.db", "timeout": "2m"}}})
    assert settings.source("a").timeout == 120.0
    assert load_settings({"sources": {"a": {"url": "sqlite:///a.db"}}}).source("a").timeout is None
    for bad in ("soon", "0s", -1):
        with pytest.raises(ldw.ConfigError, match=r"\[sources.a\] timeout|duration"):
            load_settings({"sources": {"a": {"url": "sqlite:///a.db", "timeout": bad}}})


def test_redact_removes_url_passwords_and_secret_values():
    text = "could not connect to postgresql://bob:p%40ss@db:5432/x with p@ss"
    cleaned = redact(text, [Secret("p@ss")])
    assert "p@ss" not in cleaned and "p%40ss" not in cleaned
    assert "postgresql://bob:***@db" in cleaned


def test_errors_subclass_builtins():
    assert issubclass(ldw.UnknownDataset, KeyError)
    assert issubclass(ldw.AccessDenied, PermissionError)
    assert issubclass(ldw.InvalidMapping, ValueError)
    assert issubclass(ldw.SourceUnavailable, ConnectionError)
    assert issubclass(ldw.SourceTimeout, TimeoutError)
    assert str(ldw.UnknownDataset("no dataset 'x'")) == "no dataset 'x'"


def test_core_does_not_import_ipython():
    root = os.path.join(os.path.dirname(ldw.__file__))
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(dirpath, name)).read()
                assert "import IPython" not in text and "ipywidgets" not in text, name

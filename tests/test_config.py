"""Section 5 in-process: where spans go, in the documented precedence, and settings validation."""

from __future__ import annotations

import base64

import pytest

from trace_ext._delivery.destination import resolve_destination
from trace_ext.config import SettingError, TraceExt

LANGFUSE = {
    "LANGFUSE_BASE_URL": "https://lf.example",
    "LANGFUSE_PUBLIC_KEY": "pk",
    "LANGFUSE_SECRET_KEY": "sk",
}


def resolve(monkeypatch, env: dict, **settings):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return resolve_destination(TraceExt(**settings))


def test_nothing_configured_means_local(monkeypatch):
    assert resolve(monkeypatch, {}) == (None, "")


def test_explicit_endpoint_wins_over_everything(monkeypatch):
    env = {**LANGFUSE, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel.example"}
    destination, _ = resolve(monkeypatch, env, endpoint="http://mine.example/v1/traces", headers={"a": "b"})
    assert destination.url == "http://mine.example/v1/traces" and dict(destination.headers) == {"a": "b"}


def test_langfuse_before_otel(monkeypatch):
    env = {**LANGFUSE, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel.example"}
    destination, _ = resolve(monkeypatch, env)
    assert destination.url == "https://lf.example/api/public/otel/v1/traces"
    assert destination.headers["Authorization"] == "Basic " + base64.b64encode(b"pk:sk").decode()
    assert destination.headers["x-langfuse-ingestion-version"] == "4"
    assert destination.source == "LANGFUSE_BASE_URL"


def test_langfuse_base_url_before_langfuse_host(monkeypatch):
    env = {**LANGFUSE, "LANGFUSE_HOST": "https://old.example"}
    assert resolve(monkeypatch, env)[0].url.startswith("https://lf.example/")
    monkeypatch.delenv("LANGFUSE_BASE_URL")
    assert resolve(monkeypatch, {})[0].url.startswith("https://old.example/")


def test_half_configured_langfuse_says_what_is_missing(monkeypatch):
    destination, warning = resolve(monkeypatch, {"LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_HOST": "https://x"})
    assert destination is None and "LANGFUSE_SECRET_KEY is not set" in warning


def test_otel_generic_endpoint_gets_v1_traces_and_signal_specific_is_used_as_is(monkeypatch):
    assert resolve(monkeypatch, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})[0].url == "http://c:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom")
    assert resolve(monkeypatch, {})[0].url == "http://c:4318/custom"


def test_otel_protocol_and_compression_fall_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "none")
    settings = TraceExt()
    assert (settings.protocol, settings.compression) == ("http/json", "none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")  # not ours to speak: default
    assert TraceExt().protocol == "http/protobuf"


def test_destination_shows_host_only():
    from trace_ext._delivery.destination import Destination

    destination = Destination("https://user:pw@lf.example:8443/api?key=s", "x", {"Authorization": "secret"})
    assert destination.host == "lf.example:8443"
    assert "secret" not in repr(destination) and "pw" not in destination.host


def test_invalid_values_are_setting_errors_that_are_usage_errors():
    from IPython.core.error import UsageError

    settings = TraceExt()
    with pytest.raises(UsageError, match="TraceExt.max_batch_spans must be at least 1 spans"):
        settings.max_batch_spans = 0
    with pytest.raises(SettingError):
        settings.endpoint = "localhost:4318"  # no scheme
    assert settings.max_batch_spans == 512 and settings.endpoint is None


def test_every_setting_has_help_with_units_or_choices():
    for name, trait in TraceExt.class_traits(config=True).items():
        assert trait.help and len(trait.help) > 20, name


def test_other_config_lines_still_expand_variables_from_the_callers_frame(loaded):
    # trace_ext wraps %config and takes TraceExt lines as written; every other
    # line must see {var} expanded as IPython does, from the frame that ran it.
    timeout = "get_ipython().Completer.jedi_compute_type_timeout"
    loaded.ok("ms = 71\n%config IPCompleter.jedi_compute_type_timeout = {ms}")
    assert loaded.value(timeout) == 71
    loaded.ok(
        "def shorter():\n"
        "    line = 33  # also the name of a local in trace_ext's wrapper\n"
        "    get_ipython().run_line_magic('config', 'IPCompleter.jedi_compute_type_timeout = {line}')\n"
        "shorter()"
    )
    assert loaded.value(timeout) == 33

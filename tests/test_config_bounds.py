"""Numeric settings have bounds (README "Configuration"): a value out of bounds is the clear
error of strict mode and the default with a warning in lenient mode, and no value of any
numeric setting can switch abuse detection off (issue 19: a WINDOW_SECONDS of a few hundred
digits parsed, then overflowed the detector's float seconds, and detection went "recording
only")."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_secaudit import ConfigError, Settings, runtime
from otel_secaudit.config import SETTINGS
from otel_secaudit.config_values import IntParser
from otel_secaudit.detection.window import Policy

NUMERIC = sorted(
    name for name, declared in SETTINGS.items() if isinstance(declared.parse, IntParser)
)
HUGE = "1" + "0" * 400


def variable(name: str) -> str:
    return "OTEL_SECAUDIT_" + name.upper()


def default_of(name: str) -> Any:
    return SETTINGS[name].parse(SETTINGS[name].default)


def test_every_numeric_row_is_bounded() -> None:
    assert {"window_seconds", "block_seconds", "block_max_seconds", "ipv6_prefix"} <= set(NUMERIC)
    for name in NUMERIC:
        parser = SETTINGS[name].parse
        assert isinstance(parser, IntParser)
        assert parser.minimum <= default_of(name) <= parser.maximum, name


@pytest.mark.parametrize("name", ["window_seconds", "block_seconds", "block_max_seconds"])
def test_a_few_hundred_digits_keep_detection_on(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = Settings.load(environ={variable(name): HUGE}, lenient=True)
        built = runtime.build(settings=loaded, detection=True)
    try:
        assert built.detector is not None, "detection switched itself off"
        assert getattr(loaded, name) == default_of(name)
        assert any(variable(name) in m and "using the default" in m for m in caplog.messages)
        assert not any("recording only" in m for m in caplog.messages)
    finally:
        built.close()


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("raw", [HUGE, "-" + HUGE, "9" * 5000, "2147483648000"])
def test_out_of_bounds_is_a_clear_error_in_strict_mode(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.load(environ={variable(name): raw})
    message = str(excinfo.value)
    assert variable(name) in message and "between" in message
    assert len(message) < 400  # the value is quoted cut short, not echoed whole


@pytest.mark.parametrize("name", NUMERIC)
def test_an_out_of_bounds_argument_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.load(environ={}, **{name: 10**300})


def test_bounds_are_inclusive() -> None:
    top = SETTINGS["window_seconds"].parse
    assert isinstance(top, IntParser)
    loaded = Settings.load(environ={variable("window_seconds"): str(top.maximum)})
    assert loaded.window_seconds == top.maximum
    with pytest.raises(ConfigError):
        Settings.load(environ={variable("window_seconds"): str(top.maximum + 1)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NUMERIC),
    raw=st.one_of(
        st.text(max_size=400),
        st.integers().map(str),
        st.integers(min_value=0, max_value=400).map(lambda n: "9" * n),
        st.from_regex(r"\s*[+-]?[0-9_]{0,40}(\.[0-9]*)?(e[0-9]+)?\s*", fullmatch=True),
    ),
)
def test_any_string_for_any_numeric_setting_never_raises_and_keeps_detection_on(
    name: str, raw: str
) -> None:
    loaded = Settings.load(environ={variable(name): raw}, lenient=True)
    parser = SETTINGS[name].parse
    assert isinstance(parser, IntParser)
    value = getattr(loaded, name)
    assert parser.minimum <= value <= parser.maximum
    policy = Policy.from_settings(loaded)  # what the detector is built from: no overflow
    for offences in (0, 1, 64, 10**6):
        assert (
            0
            <= policy.block_length(offences)
            <= max(policy.block_max_seconds, policy.block_seconds)
        )


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(NUMERIC),
    raw=st.one_of(st.text(max_size=60), st.integers().map(str), st.just(HUGE)),
)
def test_detection_starts_whatever_the_numeric_setting(name: str, raw: str) -> None:
    built = runtime.build(
        settings=Settings.load(environ={variable(name): raw}, lenient=True), detection=True
    )
    try:
        assert built.detector is not None
    finally:
        built.close()

"""Reading rate-limit headers: each provider's family, malformed values, and never raising."""

from __future__ import annotations

import calendar
import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runcue._headers import ServerLimit, ServerLimits, parse_duration, read_rate_limit_headers


def _utc(text: str) -> float:
    """A 'YYYY-MM-DD HH:MM:SS' UTC time as a Unix time."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


# ---------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("150us", 0.00015),
        ("150µs", 0.00015),
        ("7", 7.0),
        ("0", 0.0),
        ("2.5", 2.5),
    ],
)
def test_parse_duration_reads_go_durations_and_bare_seconds(text: str, seconds: float) -> None:
    """Go-style durations and bare numbers read as seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1s2", "-1s", "abc", "1 s", "m1"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    """Anything else reads as None."""
    assert parse_duration(text) is None


# ---------------------------------------------------------------------------- families


def test_openai_headers() -> None:
    """OpenAI's requests and tokens limits, with Go-style reset durations."""
    headers = {
        "date": "Mon, 26 May 2025 05:00:04 GMT",
        "content-type": "application/json",
        "x-ratelimit-limit-requests": "5000",
        "x-ratelimit-limit-tokens": "160000",
        "x-ratelimit-remaining-requests": "4999",
        "x-ratelimit-remaining-tokens": "159976",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-reset-tokens": "6m0s",
        "x-request-id": "req_deaa3616cbd15d33b4db96b3ba74d2b4",
    }
    limits = read_rate_limit_headers(headers, now_wall=1_748_235_604.0)
    assert limits.get("requests") == ServerLimit("requests", 5000, 4999, 0.012, family="openai")
    assert limits.get("tokens") == ServerLimit("tokens", 160000, 159976, 360.0, family="openai")
    assert limits.retry_after is None
    assert set(limits.dimensions) == {"requests", "tokens"}


def test_openai_extra_suffixes_are_their_own_dimension() -> None:
    """An unknown suffix such as tokens_usage_based is read under its own name."""
    headers = {
        "x-ratelimit-limit-tokens_usage_based": "160000",
        "x-ratelimit-remaining-tokens_usage_based": "159976",
        "x-ratelimit-reset-tokens_usage_based": "9ms",
    }
    limit = read_rate_limit_headers(headers, now_wall=0.0).get("tokens_usage_based")
    assert limit == ServerLimit("tokens_usage_based", 160000, 159976, 0.009, family="openai")


def test_openai_429_with_retry_after_ms_preferred() -> None:
    """On a 429, retry-after-ms (more precise) wins over retry-after."""
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "retry-after": "2",
        "retry-after-ms": "1500",
    }
    limits = read_rate_limit_headers(headers, now_wall=0.0)
    assert limits.retry_after == 1.5
    assert limits.get("requests") == ServerLimit("requests", 60, 0, 1.0, family="openai")


def test_anthropic_headers() -> None:
    """Anthropic's four dimensions, resets as RFC 3339 times turned into seconds from now."""
    headers = {
        "date": "Thu, 21 Aug 2025 12:41:00 GMT",
        "anthropic-ratelimit-input-tokens-limit": "80000",
        "anthropic-ratelimit-input-tokens-remaining": "79000",
        "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:41:59Z",
        "anthropic-ratelimit-output-tokens-limit": "16000",
        "anthropic-ratelimit-output-tokens-remaining": "16000",
        "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:41:00Z",
        "anthropic-ratelimit-requests-limit": "1000",
        "anthropic-ratelimit-requests-remaining": "999",
        "anthropic-ratelimit-requests-reset": "2025-08-21T12:41:00.5Z",
        "anthropic-ratelimit-tokens-limit": "96000",
        "anthropic-ratelimit-tokens-remaining": "95000",
        "anthropic-ratelimit-tokens-reset": "2025-08-21T14:41:59+02:00",
        "request-id": "req_011CSLsW7mFqvHHnzrKdKjAE",
    }
    now = _utc("2025-08-21 12:40:59")
    limits = read_rate_limit_headers(headers, now_wall=now)
    assert limits.get("input_tokens") == ServerLimit(
        "input_tokens", 80000, 79000, 60.0, family="anthropic"
    )
    assert limits.get("output_tokens") == ServerLimit(
        "output_tokens", 16000, 16000, 1.0, family="anthropic"
    )
    assert limits.get("requests") == ServerLimit("requests", 1000, 999, 1.5, family="anthropic")
    assert limits.get("tokens") == ServerLimit("tokens", 96000, 95000, 60.0, family="anthropic")


def test_anthropic_429_with_retry_after_seconds() -> None:
    """A 429 from Anthropic: nothing left, retry-after in seconds, a reset already past is 0."""
    headers = [
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "0"),
        ("anthropic-ratelimit-requests-reset", "2025-10-25T12:00:00Z"),
        ("retry-after", "60"),
    ]
    limits = read_rate_limit_headers(headers, now_wall=_utc("2025-10-25 12:00:30"))
    assert limits.retry_after == 60.0
    assert limits.get("requests") == ServerLimit("requests", 50, 0, 0.0, family="anthropic")


def test_github_headers() -> None:
    """GitHub: epoch-second reset, the resource as the limit's name, under 'requests'."""
    headers = {
        "X-RateLimit-Limit": "5000",
        "X-RateLimit-Remaining": "4966",
        "X-RateLimit-Used": "34",
        "X-RateLimit-Reset": "1372700873",
        "X-RateLimit-Resource": "core",
    }
    limits = read_rate_limit_headers(headers, now_wall=1_372_700_873 - 1800.0)
    assert limits.limits == (
        ServerLimit("requests", 5000, 4966, 1800.0, name="core", family="github"),
    )


def test_github_limit_from_used_and_remaining() -> None:
    """Without a limit header, GitHub's limit is used + remaining."""
    headers = {"x-ratelimit-remaining": "18", "x-ratelimit-used": "12", "x-ratelimit-reset": "30"}
    (limit,) = read_rate_limit_headers(headers, now_wall=1e9 + 5).limits
    assert (limit.limit, limit.remaining, limit.reset_after) == (30, 18, 30.0)


def test_github_secondary_limit_403_with_retry_after() -> None:
    """A secondary rate limit answer: remaining 0 and a plain retry-after."""
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1377013266", "retry-after": "30"}
    limits = read_rate_limit_headers(headers, now_wall=1_377_013_266 + 10.0)
    assert limits.retry_after == 30.0
    assert limits.get("requests") == ServerLimit("requests", None, 0, 0.0, family="github")


def test_ietf_older_draft_fields() -> None:
    """RateLimit-Limit / -Remaining / -Reset: delta seconds, a policy's window after the limit."""
    headers = {
        "RateLimit-Limit": "10, 10;w=1, 1000;w=3600",
        "RateLimit-Remaining": "9",
        "RateLimit-Reset": "1",
    }
    limits = read_rate_limit_headers(headers, now_wall=0.0)
    assert limits.limits == (ServerLimit("requests", 10, 9, 1.0, window=1.0, family="ietf"),)


def test_ietf_older_fields_with_a_unix_time_reset() -> None:
    """A RateLimit-Reset above 10**9 (as GitLab sends) is a Unix time."""
    headers = {"RateLimit-Limit": "60", "RateLimit-Remaining": "0", "RateLimit-Reset": "1609844400"}
    limit = read_rate_limit_headers(headers, now_wall=1_609_844_400 - 25.0).get("requests")
    assert limit == ServerLimit("requests", 60, 0, 25.0, family="ietf")


def test_ietf_current_draft_policy_and_ratelimit() -> None:
    """RateLimit-Policy and RateLimit are joined by policy name; get() takes the tightest."""
    headers = {
        "RateLimit-Policy": '"permin";q=50;w=60, "perhr";q=1000;w=3600, "daily";q=5000;w=86400',
        "RateLimit": '"permin";r=20;t=23, "perhr";r=399;t=2402',
    }
    limits = read_rate_limit_headers(headers, now_wall=0.0)
    assert limits.get("requests") == ServerLimit(
        "requests", 50, 20, 23.0, window=60.0, name="permin", family="ietf"
    )
    assert ServerLimit("requests", 5000, None, None, 86400.0, "daily", "ietf") in limits.limits
    assert len(limits.limits) == 3


def test_ietf_current_draft_quota_units_name_the_dimension() -> None:
    """The qu parameter names the dimension (tokens here); tokens and bare items parse."""
    headers = [
        ("ratelimit-policy", 'tpm;q=90000;w=60;qu="tokens";pk=:cHJvamVjdA==:'),
        ("ratelimit-policy", "rpm;q=500;w=60"),
        ("ratelimit", "tpm;r=1200;t=7, rpm;r=499;t=1"),
    ]
    limits = read_rate_limit_headers(headers, now_wall=0.0)
    assert limits.get("tokens") == ServerLimit("tokens", 90000, 1200, 7.0, 60.0, "tpm", "ietf")
    assert limits.get("requests") == ServerLimit("requests", 500, 499, 1.0, 60.0, "rpm", "ietf")


def test_ietf_ratelimit_without_a_policy_counts_requests() -> None:
    """A RateLimit item with no matching policy is a requests limit of unknown size."""
    limits = read_rate_limit_headers({"RateLimit": '"protection";r=50;t=30'}, now_wall=0.0)
    assert limits.limits == (ServerLimit("requests", None, 50, 30.0, None, "protection", "ietf"),)


def test_ratelimit_dictionary_form() -> None:
    """The dictionary form limit=, remaining=, reset= is read as a requests limit."""
    limits = read_rate_limit_headers({"RateLimit": "limit=10, remaining=1, reset=7"}, now_wall=0)
    assert limits.limits == (ServerLimit("requests", 10, 1, 7.0, family="ietf"),)


def test_retry_after_as_an_http_date() -> None:
    """Retry-After as an HTTP-date is seconds from now_wall; a past date is 0."""
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    moment = _utc("2015-10-21 07:28:00")
    assert read_rate_limit_headers({"Retry-After": date}, now_wall=moment - 10).retry_after == 10
    assert read_rate_limit_headers({"Retry-After": date}, now_wall=moment + 10).retry_after == 0


def test_no_rate_limit_headers_read_as_empty() -> None:
    """A response without rate-limit headers reads as an empty, falsy result."""
    limits = read_rate_limit_headers({"content-type": "application/json"}, now_wall=0.0)
    assert limits == ServerLimits()
    assert not limits
    assert limits.get("requests") is None
    assert read_rate_limit_headers({"retry-after": "1"}, now_wall=0.0)


# ---------------------------------------------------------------------------- input shapes


def test_names_are_case_insensitive_and_bytes_are_read() -> None:
    """Header names in any case, as str or bytes (raw ASGI headers), read alike."""
    pairs: list[tuple[str | bytes, str | bytes]] = [
        (b"X-RateLimit-Limit-Requests", b"60"),
        (b"x-ratelimit-REMAINING-requests", b"59"),
        ("X-RATELIMIT-RESET-REQUESTS", "1s"),
    ]
    limit = read_rate_limit_headers(pairs, now_wall=0.0).get("requests")
    assert limit == ServerLimit("requests", 60, 59, 1.0, family="openai")


def test_repeated_fields_are_joined_as_a_list() -> None:
    """A field sent twice is one list (HTTP's rule); for a count the first member counts."""
    pairs = [("ratelimit-remaining", "5"), ("ratelimit-remaining", "7")]
    assert read_rate_limit_headers(pairs, now_wall=0.0).get("requests") == ServerLimit(
        "requests", None, 5, None, family="ietf"
    )


def test_headers_of_the_wrong_type_are_the_callers_error() -> None:
    """A string or a number instead of headers raises TypeError (it is not the server's)."""
    with pytest.raises(TypeError, match="mapping"):
        read_rate_limit_headers("retry-after: 1", now_wall=0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping"):
        read_rate_limit_headers(42, now_wall=0.0)  # type: ignore[arg-type]


def test_pairs_that_are_not_pairs_are_skipped() -> None:
    """Entries that are not (name, value) pairs of text are skipped, the rest read."""
    pairs = [("retry-after",), (1, "2"), ("retry-after", 3), ("retry-after", "4")]
    assert read_rate_limit_headers(pairs, now_wall=0.0).retry_after == 4  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "-1"}, ()),
        ({"x-ratelimit-remaining-tokens": "lots", "x-ratelimit-reset-tokens": "soon"}, ()),
        ({"x-ratelimit-reset-tokens": "1e999"}, ()),
        ({"anthropic-ratelimit-tokens-reset": "2025-13-45T99:00:00Z"}, ()),
        ({"anthropic-ratelimit-tokens-reset": "2025-08-21T12:41:00"}, ()),  # no offset
        ({"anthropic-ratelimit-tokens-reset": "2025-08-21T12:41:00+25:00"}, ()),
        ({"ratelimit": '"unterminated;r=5'}, ()),
        ({"ratelimit": "p;r=5,"}, ()),
        ({"ratelimit": "p;r=-5;t=?1"}, ()),
        ({"ratelimit-policy": "p;q=?0"}, ()),
        ({"ratelimit-policy": "p;q=1 garbage"}, ()),
        ({"ratelimit": "p;r=5 q;r=6"}, ()),
    ],
)
def test_malformed_values_are_ignored(
    headers: dict[str, str], expected: tuple[ServerLimit, ...]
) -> None:
    """A value that does not parse is left out as if it had not been sent."""
    assert read_rate_limit_headers(headers, now_wall=0.0).limits == expected


@pytest.mark.parametrize(
    "value", ["soon", "-5", "Wed, 99 Foo 2015 07:28:00 GMT", "1e999", "", "nan", "inf"]
)
def test_a_malformed_retry_after_is_ignored(value: str) -> None:
    """A retry-after that is neither seconds nor an HTTP-date reads as None."""
    headers = {"retry-after": value, "retry-after-ms": value}
    assert read_rate_limit_headers(headers, now_wall=0.0).retry_after is None


def test_one_malformed_header_does_not_hide_the_others() -> None:
    """Good headers are still read beside a malformed one."""
    headers = {
        "x-ratelimit-remaining-requests": "??",
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-tokens": "100",
    }
    limits = read_rate_limit_headers(headers, now_wall=0.0)
    assert limits.get("requests") == ServerLimit("requests", 60, None, None, family="openai")
    assert limits.get("tokens") == ServerLimit("tokens", None, 100, None, family="openai")


_NAMES = st.sampled_from(
    [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-requests-remaining",
        "x-ratelimit-limit",
        "x-ratelimit-reset",
        "x-ratelimit-used",
        "x-ratelimit-resource",
        "ratelimit-limit",
        "ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
        "retry-after",
        "retry-after-ms",
    ]
)
_VALUES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet='0123456789.;=,"-:?abcdefqrtwlu TZ', max_size=40),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@settings(max_examples=500, deadline=None)
@given(
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
    now_wall=st.floats(min_value=0, max_value=4e9),
)
def test_property_never_raises_and_reports_sane_numbers(
    headers: list[tuple[str, str]], now_wall: float
) -> None:
    """Whatever a server sends, reading never raises and every number is finite and >= 0."""
    limits = read_rate_limit_headers(headers, now_wall=now_wall)
    if limits.retry_after is not None:
        assert math.isfinite(limits.retry_after) and limits.retry_after >= 0
    for limit in limits.limits:
        for value in (limit.limit, limit.remaining, limit.reset_after, limit.window):
            assert value is None or (math.isfinite(value) and value >= 0)

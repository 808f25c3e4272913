"""What a server's response headers say about its rate limits, read into one small shape.

This module owns :func:`read_rate_limit_headers`: it takes a response's headers (any mapping,
or a list of ``(name, value)`` pairs, names in any case, ``str`` or ``bytes``) and returns a
frozen :class:`ServerLimits`: for each dimension (``requests``, ``tokens``, ``input_tokens``,
``output_tokens``, or whatever a server names) the limit, what is left and the seconds until
the window resets, plus ``retry_after``. It is pure: the wall-clock time ``now_wall``
(``time.time()`` when the response arrived) is passed in and only turns absolute times into
seconds from then.

The families read, and where their formats are documented:

OpenAI
    ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are Go-style durations
    (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``), "the time until the rate limit resets
    to its initial state" (platform.openai.com/docs/guides/rate-limits, "Rate limits in
    headers"). Any other suffix (e.g. ``tokens_usage_based``) is read as its own dimension.
Anthropic
    ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,
    reset}``; resets are RFC 3339 times such as ``2025-08-21T12:40:59Z``
    (docs.anthropic.com, "Rate limits", response headers). Other names in the same pattern are
    read as their own dimension; a numeric reset is read as below.
GitHub
    ``x-ratelimit-{limit,remaining,used,reset}`` and ``x-ratelimit-resource``; the reset is
    "the time at which the current rate limit window resets in UTC epoch seconds"
    (docs.github.com, "Rate limits for the REST API", and its change note adding
    ``x-ratelimit-used``). Read as the ``requests`` dimension, ``name`` = the resource; the
    limit is ``used + remaining`` when only those two are sent.
IETF drafts, older form
    ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (draft-ietf-httpapi-
    ratelimit-headers up to -06): the reset is delta seconds; a limit may carry its policy
    (``"100, 100;w=60"``: the first member is the limit, its ``w`` the window).
IETF drafts, current form
    ``RateLimit-Policy: "default";q=100;w=60`` and ``RateLimit: "default";r=50;t=30``
    (draft-ietf-httpapi-ratelimit-headers -08 and later, github.com/ietf-wg-httpapi/
    ratelimit-headers): Structured Field lists; ``q`` quota (``l`` in some examples), ``w``
    window seconds, ``qu`` quota unit (default ``request``; the dimension, pluralised:
    ``requests``, ``tokens``, ``content_bytes``), ``pk`` partition key; ``r`` remaining, ``t``
    seconds until reset. Policies and current limits are joined by name. A dictionary form
    ``RateLimit: limit=10, remaining=1, reset=7`` that some servers send is read too.
``Retry-After``
    delta seconds or an HTTP-date (RFC 9110, section 10.2.3).
``retry-after-ms``
    milliseconds, as the OpenAI and Anthropic SDKs read it; preferred over ``Retry-After``
    when both are valid (it is more precise).

Two readings are heuristics, documented here: a bare numeric ``x-ratelimit-reset`` or
``RateLimit-Reset`` above 10**9 (September 2001) is a Unix time (GitHub, GitLab), anything
smaller is seconds from now (most other APIs, the IETF drafts); a time already past means 0.

**Malformed values are ignored, never raised on**: a value that does not parse (a negative
count such as Azure's ``-1``, a word, an endless number, a date that is not one) is left out as
if the server had not sent it, and the rest of the headers are still read. Only passing
something that is not a mapping or an iterable of pairs is the caller's error (``TypeError``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from ._sfv import int_param, members, seconds_param

__all__ = [
    "HeadersLike",
    "ServerLimit",
    "ServerLimits",
    "parse_duration",
    "read_rate_limit_headers",
]

HeadersLike = Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[str | bytes, str | bytes]]
"""Response headers as any HTTP library gives them: a mapping, or (name, value) pairs."""

_EPOCH_THRESHOLD = 1e9  # a reset above this is a Unix time, below it seconds from now


@dataclass(frozen=True)
class ServerLimit:
    """One limit the server reported: how much is left of it and when it resets."""

    dimension: str
    """What it counts: ``requests``, ``tokens``, ``input_tokens``, ``output_tokens``, ..."""
    limit: int | None = None
    """The whole quota of the window, when the server says."""
    remaining: int | None = None
    """What is left of it when the server answered."""
    reset_after: float | None = None
    """Seconds from the response until the window resets (>= 0)."""
    window: float | None = None
    """The policy's window in seconds, when the server says (IETF ``w``)."""
    name: str | None = None
    """The server's name for it: GitHub's resource (``core``), an IETF policy name."""
    family: str = ""
    """Which header family it came from: ``openai``, ``anthropic``, ``github``, ``ietf``."""


@dataclass(frozen=True)
class ServerLimits:
    """Everything the headers said about rate limits (empty when they said nothing)."""

    limits: tuple[ServerLimit, ...] = ()
    retry_after: float | None = None
    """Seconds to wait before the next request (``Retry-After`` / ``retry-after-ms``)."""

    def __bool__(self) -> bool:
        return bool(self.limits) or self.retry_after is not None

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The dimensions reported, in the order first seen."""
        return tuple(dict.fromkeys(limit.dimension for limit in self.limits))

    def get(self, dimension: str) -> ServerLimit | None:
        """The tightest limit reported for ``dimension``: the least remaining (the latest
        reset among equals); ``None`` if none was reported."""
        candidates = [limit for limit in self.limits if limit.dimension == dimension]
        if not candidates:
            return None
        known = [limit for limit in candidates if limit.remaining is not None]
        if not known:
            return candidates[0]
        return min(
            known,
            key=lambda limit: (limit.remaining, -(limit.reset_after or 0.0)),
        )


# ------------------------------------------------------------------ values


_INTEGER = re.compile(r"^\+?(\d{1,30})(?:\.\d*)?$")
_NUMBER = re.compile(r"^\+?(?:\d{1,30}(?:\.\d*)?|\.\d+)$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {  # (multiply by, divide by): dividing keeps "9ms" exactly 0.009
    "ns": (1.0, 1e9),
    "us": (1.0, 1e6),
    "µs": (1.0, 1e6),
    "μs": (1.0, 1e6),
    "ms": (1.0, 1e3),
    "s": (1.0, 1.0),
    "m": (60.0, 1.0),
    "h": (3600.0, 1.0),
}
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def _count(text: str) -> int | None:
    """A count >= 0 (a decimal count is floored); None if it is not one."""
    match = _INTEGER.match(text.strip())
    return int(match[1]) if match else None


def _seconds(text: str) -> float | None:
    """A finite number of seconds >= 0; None if it is not one."""
    text = text.strip()
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def parse_duration(text: str) -> float | None:
    """A Go-style duration (``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``) or a bare number of
    seconds, in seconds; None if it is neither."""
    text = text.strip()
    plain = _seconds(text)
    if plain is not None:
        return plain
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            return None
        multiplier, divisor = _DURATION_UNITS[match[2]]
        total += float(match[1]) * multiplier / divisor
        position = match.end()
    return total if position and math.isfinite(total) else None


def _rfc3339(text: str) -> float | None:
    """An RFC 3339 time as a Unix time; None if it is not one."""
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    offset = match[8]
    if offset in ("Z", "z"):
        zone = timezone.utc
    else:
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            return None
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=zone)
    except ValueError:
        return None
    fraction = float(match[7]) if match[7] else 0.0
    return moment.timestamp() + fraction + (1 if second == 60 else 0)  # a leap second


def _http_date(text: str) -> float | None:
    """An HTTP-date as a Unix time; None if it is not one."""
    try:
        moment = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is None:  # some Pythons return None instead of raising
        return None  # pragma: no cover - depends on the Python version
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError, OSError):  # pragma: no cover - platform limits
        return None


def _until(moment: float | None, now_wall: float) -> float | None:
    return None if moment is None else max(0.0, moment - now_wall)


def _numeric_reset(text: str, now_wall: float) -> float | None:
    """A bare number: a Unix time if above 10**9, else seconds from now."""
    value = _seconds(text)
    if value is None:
        return None
    return _until(value, now_wall) if value > _EPOCH_THRESHOLD else value


def _anthropic_reset(text: str, now_wall: float) -> float | None:
    moment = _rfc3339(text)
    if moment is not None:
        return _until(moment, now_wall)
    return _numeric_reset(text, now_wall)


def _dimension(name: str) -> str:
    """A dimension name: lower case, '-' as '_'."""
    return name.strip().lower().replace("-", "_")


def _unit_dimension(unit: str) -> str:
    """An IETF quota unit as a dimension: ``request`` -> ``requests``, ``token`` -> ``tokens``."""
    dimension = _dimension(unit)
    return {"request": "requests", "token": "tokens"}.get(dimension, dimension)


# ------------------------------------------------------------------ reading


def _collect(headers: HeadersLike) -> dict[str, str]:
    """Names lower-cased; repeated fields joined with ', ' (HTTP's list rule)."""
    if isinstance(headers, Mapping):
        pairs: Iterable[object] = headers.items()
    elif isinstance(headers, str | bytes) or not isinstance(headers, Iterable):
        msg = f"headers must be a mapping or an iterable of (name, value) pairs, got {headers!r}"
        raise TypeError(msg)
    else:
        pairs = headers
    fields: dict[str, str] = {}
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            continue
        name, value = pair
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        name = name.strip().lower()
        value = value.strip()
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return fields


def _first(text: str) -> str:
    """The first member of a list value (``"100, 100;w=60"`` -> ``"100"``)."""
    return text.split(",", 1)[0].split(";", 1)[0]


class _Partial:
    """The fields of one limit as they are found."""

    __slots__ = ("limit", "name", "remaining", "reset_after", "used", "window")

    def __init__(self) -> None:
        self.limit: int | None = None
        self.remaining: int | None = None
        self.used: int | None = None
        self.reset_after: float | None = None
        self.window: float | None = None
        self.name: str | None = None


_Found = dict[tuple[str, str, str | None], _Partial]


def _part(found: _Found, family: str, dimension: str, name: str | None = None) -> _Partial:
    """The limit being read for (family, dimension, name), created on first use."""
    key = (family, dimension, name)
    part = found.get(key)
    if part is None:
        part = found[key] = _Partial()
    return part


_OPENAI = re.compile(r"^x-ratelimit-(limit|remaining|reset)-([a-z0-9_\-]+)$")
_ANTHROPIC = re.compile(r"^anthropic-ratelimit-([a-z0-9_\-]+?)-(limit|remaining|reset)$")


def read_rate_limit_headers(headers: HeadersLike, *, now_wall: float) -> ServerLimits:
    """Read the rate-limit headers of one response (see the module docstring for the
    families). ``now_wall`` is the wall-clock time (``time.time()``) the response arrived.

    Malformed values are ignored; this never raises on what a server sent.

    :raises TypeError: if ``headers`` is neither a mapping nor an iterable of pairs.
    """
    fields = _collect(headers)
    found: _Found = {}
    for header, value in fields.items():
        match = _OPENAI.match(header)
        if match is not None:
            field, dimension = match[1], _dimension(match[2])
            if field == "reset":
                seconds = parse_duration(_first(value))
                if seconds is not None:
                    _part(found, "openai", dimension).reset_after = seconds
            else:
                count = _count(_first(value))
                if count is not None:
                    setattr(_part(found, "openai", dimension), field, count)
            continue
        match = _ANTHROPIC.match(header)
        if match is not None:
            dimension, field = _dimension(match[1]), match[2]
            if field == "reset":
                seconds = _anthropic_reset(value, now_wall)
                if seconds is not None:
                    _part(found, "anthropic", dimension).reset_after = seconds
            else:
                count = _count(_first(value))
                if count is not None:
                    setattr(_part(found, "anthropic", dimension), field, count)

    _read_github(fields, now_wall, found)
    _read_ietf_fields(fields, now_wall, found)
    _read_ietf_structured(fields, found)

    limits: list[ServerLimit] = []
    for (family, dimension, name), part in found.items():
        limit = part.limit
        if limit is None and part.used is not None and part.remaining is not None:
            limit = part.used + part.remaining
        if limit is None and part.remaining is None and part.reset_after is None:
            continue
        limits.append(
            ServerLimit(
                dimension=dimension,
                limit=limit,
                remaining=part.remaining,
                reset_after=part.reset_after,
                window=part.window,
                name=name if name is not None else part.name,
                family=family,
            )
        )
    return ServerLimits(tuple(limits), _retry_after(fields, now_wall))


def _read_github(fields: dict[str, str], now_wall: float, found: _Found) -> None:
    names = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-used", "x-ratelimit-reset")
    if not any(name in fields for name in names):
        return
    resource = fields.get("x-ratelimit-resource", "").strip() or None
    part = _part(found, "github", "requests", resource)
    for field in ("limit", "remaining", "used"):
        text = fields.get(f"x-ratelimit-{field}")
        if text is not None:
            count = _count(_first(text))
            if count is not None:
                setattr(part, field, count)
    reset = fields.get("x-ratelimit-reset")
    if reset is not None:
        part.reset_after = _numeric_reset(_first(reset), now_wall)


def _read_ietf_fields(fields: dict[str, str], now_wall: float, found: _Found) -> None:
    names = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
    if not any(name in fields for name in names):
        return
    part = _part(found, "ietf", "requests")
    limit = fields.get("ratelimit-limit")
    if limit is not None:
        part.limit = _count(_first(limit))
        # "100, 100;w=60": the members after the first describe its policy.
        windows = [seconds_param(params.get("w")) for _, _, params in members(limit)]
        part.window = next((window for window in windows if window is not None), None)
    remaining = fields.get("ratelimit-remaining")
    if remaining is not None:
        part.remaining = _count(_first(remaining))
    reset = fields.get("ratelimit-reset")
    if reset is not None:
        part.reset_after = _numeric_reset(_first(reset), now_wall)


def _read_ietf_structured(fields: dict[str, str], found: _Found) -> None:
    policies: dict[str, tuple[str, int | None, float | None]] = {}
    for item, value, params in members(fields.get("ratelimit-policy", "")):
        if value is not None or not isinstance(item, str):
            continue
        unit = params.get("qu", "request")
        dimension = _unit_dimension(unit) if isinstance(unit, str) else "requests"
        quota = int_param(params.get("q", params.get("l")))
        policies[item] = (dimension, quota, seconds_param(params.get("w")))

    current = members(fields.get("ratelimit", ""))
    keyed = {item: value for item, value, _ in current if value is not None}
    if keyed and set(keyed) <= {"limit", "remaining", "reset", "policy"}:
        # The dictionary form: "limit=10, remaining=1, reset=7".
        part = _part(found, "ietf", "requests")
        part.limit = int_param(keyed.get("limit"))
        part.remaining = int_param(keyed.get("remaining"))
        part.reset_after = seconds_param(keyed.get("reset"))
        return
    seen: set[str] = set()
    for item, value, params in current:
        if value is not None or not isinstance(item, str):
            continue
        dimension, quota, window = policies.get(item, ("requests", None, None))
        part = _part(found, "ietf", dimension, item)
        part.limit = quota
        part.window = window
        part.remaining = int_param(params.get("r"))
        part.reset_after = seconds_param(params.get("t"))
        seen.add(item)
    for item, (dimension, quota, window) in policies.items():
        if item not in seen and quota is not None:
            part = _part(found, "ietf", dimension, item)
            part.limit, part.window = quota, window


def _retry_after(fields: dict[str, str], now_wall: float) -> float | None:
    milliseconds = fields.get("retry-after-ms")
    if milliseconds is not None:
        value = _seconds(_first(milliseconds))
        if value is not None:
            return value / 1000
    text = fields.get("retry-after")
    if text is None:
        return None
    seconds = _seconds(text)
    if seconds is not None:
        return seconds
    return _until(_http_date(text), now_wall)

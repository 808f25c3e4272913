"""Structured Field Values (RFC 8941), read as far as the IETF ``RateLimit`` and
``RateLimit-Policy`` fields need: Lists and Dictionaries of bare items (tokens, keys,
integers, decimals, strings, booleans) with parameters. A field that does not parse is
ignored as a whole (:func:`members` returns no member), as the RFC asks.
"""

from __future__ import annotations

import math
import re

__all__ = ["int_param", "members", "seconds_param"]

_SF_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9_\-.:%*/!#$&'+^`|~]*")
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_NUMBER = re.compile(r"-?\d{1,15}(?:\.\d{1,3})?")

_Bare = str | int | float | bool


class _Malformed(Exception):
    """A Structured Field that does not parse (the whole field is then ignored)."""


class _Reader:
    """A small reader of RFC 8941 lists and dictionaries: enough for the RateLimit fields."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def _skip(self, spaces: str = " \t") -> None:
        while self.at < len(self.text) and self.text[self.at] in spaces:
            self.at += 1

    def bare(self) -> _Bare:
        text, at = self.text, self.at
        if at >= len(text):
            raise _Malformed
        char = text[at]
        if char == '"':
            out = []
            at += 1
            while at < len(text):
                char = text[at]
                if char == "\\" and at + 1 < len(text):
                    out.append(text[at + 1])
                    at += 2
                elif char == '"':
                    self.at = at + 1
                    return "".join(out)
                else:
                    out.append(char)
                    at += 1
            raise _Malformed
        if char == ":":  # a byte sequence, kept as its base64 text
            end = text.find(":", at + 1)
            if end < 0:
                raise _Malformed
            self.at = end + 1
            return text[at + 1 : end]
        if char == "?":
            if text[at + 1 : at + 2] in ("0", "1"):
                self.at = at + 2
                return text[at + 1] == "1"
            raise _Malformed
        number = _SF_NUMBER.match(text, at)
        if number is not None:
            self.at = number.end()
            return float(number[0]) if "." in number[0] else int(number[0])
        token = _SF_TOKEN.match(text, at)
        if token is not None:
            self.at = token.end()
            return token[0]
        raise _Malformed

    def key(self) -> str:
        match = _SF_KEY.match(self.text, self.at)
        if match is None:
            raise _Malformed
        self.at = match.end()
        return match[0]

    def parameters(self) -> dict[str, _Bare]:
        params: dict[str, _Bare] = {}
        while self.at < len(self.text) and self.text[self.at] == ";":
            self.at += 1
            self._skip(" ")
            key = self.key()
            value: _Bare = True
            if self.at < len(self.text) and self.text[self.at] == "=":
                self.at += 1
                value = self.bare()
            params[key] = value
        return params

    def members(self) -> list[tuple[_Bare, _Bare | None, dict[str, _Bare]]]:
        """Each member as (item or key, its value if written ``key=value``, parameters)."""
        out: list[tuple[_Bare, _Bare | None, dict[str, _Bare]]] = []
        self._skip()
        while self.at < len(self.text):
            item = self.bare()
            value: _Bare | None = None
            if isinstance(item, str) and self.at < len(self.text) and self.text[self.at] == "=":
                self.at += 1
                value = self.bare()
            out.append((item, value, self.parameters()))
            self._skip()
            if self.at >= len(self.text):
                break
            if self.text[self.at] != ",":
                raise _Malformed
            self.at += 1
            self._skip()
            if self.at >= len(self.text):
                raise _Malformed  # a trailing comma
        return out


def members(text: str) -> list[tuple[_Bare, _Bare | None, dict[str, _Bare]]]:
    """The members of a List or Dictionary field: (item or key, value, parameters); none
    when the field does not parse."""
    try:
        return _Reader(text).members()
    except (_Malformed, ValueError, OverflowError):
        return []


def int_param(value: _Bare | None) -> int | None:
    """A parameter as a count (None: absent, negative or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value >= 0 and math.isfinite(value) else None


def seconds_param(value: _Bare | None) -> float | None:
    """A parameter as seconds (None: absent, negative or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value >= 0 and math.isfinite(value) else None

"""Envoy's string and header matchers as precompiled predicates (sans-IO).

``StringMatcher`` (``envoy.type.matcher.v3.StringMatcher``) and ``HeaderMatcher``
(``envoy.config.route.v3.HeaderMatcher``) are compiled once into closures; matching is a call.
RE2 patterns run on Python's ``re`` with full-match semantics; the two agree on the common
subset (no backreferences or lookaround in RE2; Python accepts more than RE2 does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from trioproxy.errors import ConfigError
from trioproxy.http.headers import Headers

Predicate = Callable[[str], bool]


def compile_regex(d: Mapping[str, Any], path: str = "regex") -> re.Pattern[str]:
    """A ``RegexMatcher`` (``{google_re2: {}, regex: ...}``) or a bare pattern string."""
    pattern = d.get("regex", "") if isinstance(d, Mapping) else str(d)
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"invalid regex '{pattern}': {exc}", path=path) from None


def _contains(value: str, want: str) -> bool:
    return want in value


_STRING_TESTS: dict[str, Callable[[str, str], bool]] = {
    "exact": str.__eq__,
    "prefix": str.startswith,
    "suffix": str.endswith,
    "contains": _contains,
}


def string_matcher(d: Mapping[str, Any]) -> Predicate:
    ignore_case = bool(d.get("ignore_case", False))
    if "safe_regex" in d:
        rx = compile_regex(d["safe_regex"], "safe_regex")
        return lambda v: rx.fullmatch(v) is not None
    kind = next((k for k in ("exact", "prefix", "suffix", "contains") if k in d), None)
    if kind is None:
        raise ConfigError(
            "a StringMatcher needs one of exact, prefix, suffix, contains, safe_regex"
        )
    want = str(d[kind])
    test = _STRING_TESTS[kind]
    if ignore_case:
        lowered = want.lower()
        return lambda v: test(v.lower(), lowered)
    return lambda v: test(v, want)


def header_matcher(d: Mapping[str, Any]) -> Callable[[Headers], bool]:
    """A compiled ``HeaderMatcher``; several values of a header are joined with ','."""
    name = str(d.get("name", "")).lower()
    if not name:
        raise ConfigError("a header matcher needs a name", path="name")
    invert = bool(d.get("invert_match", False))
    missing_as_empty = bool(d.get("treat_missing_header_as_empty", False))
    value_pred: Predicate | None
    if "exact_match" in d:
        exact = str(d["exact_match"])
        value_pred = lambda v: v == exact  # noqa: E731
    elif "string_match" in d:
        value_pred = string_matcher(d["string_match"])
    elif "safe_regex_match" in d:
        rx = compile_regex(d["safe_regex_match"], "safe_regex_match")
        value_pred = lambda v: rx.fullmatch(v) is not None  # noqa: E731
    elif "prefix_match" in d:
        p = str(d["prefix_match"])
        value_pred = lambda v: v.startswith(p)  # noqa: E731
    elif "suffix_match" in d:
        s = str(d["suffix_match"])
        value_pred = lambda v: v.endswith(s)  # noqa: E731
    elif "contains_match" in d:
        c = str(d["contains_match"])
        value_pred = lambda v: c in v  # noqa: E731
    elif "range_match" in d:
        r = d["range_match"]
        lo, hi = int(r.get("start", 0)), int(r.get("end", 0))

        def in_range(v: str) -> bool:
            try:
                n = int(v)
            except ValueError:
                return False
            return lo <= n < hi

        value_pred = in_range
    elif "present_match" in d:
        present = bool(d["present_match"])
        value_pred = None
        if not present:
            invert = not invert
    else:
        value_pred = None  # no specifier: the header must be present

    def match(headers: Headers) -> bool:
        values = headers.get_all(name)
        if not values:
            if missing_as_empty and value_pred is not None:
                return value_pred("") != invert
            return invert
        if value_pred is None:
            return not invert
        return value_pred(",".join(values)) != invert

    return match


def query_parameter_matcher(d: Mapping[str, Any]) -> Callable[[Mapping[str, str]], bool]:
    name = str(d.get("name", ""))
    if "string_match" in d:
        pred = string_matcher(d["string_match"])
        return lambda params: name in params and pred(params[name])
    if d.get("present_match"):
        return lambda params: name in params
    return lambda params: name in params

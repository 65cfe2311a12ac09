"""Retries: a route's ``retry_policy`` compiled, and the retry state of one request (sans-IO).

Theory of operation (Envoy's router, ``RetryStateImpl``): the router makes an attempt, then
asks the ``RetryState`` whether its outcome — an upstream failure before any response, or the
response head — calls for another. A retry is made when the outcome matches a ``retry_on``
condition, attempts remain (``num_retries``, default 1) and the cluster's retry circuit breaker
(``max_retries`` concurrent retries, default 3) has room; it waits a fully jittered exponential
back-off first (base 25 ms, cap 10 times base: the first retry within 0-24 ms, the second 0-74 ms
…). The route timeout covers every attempt and back-off; ``per_try_timeout`` bounds each one.

Outcomes and the conditions that retry them:

- a connect failure (flag UF): ``connect-failure``, ``reset``, ``reset-before-request``,
  ``5xx``, ``gateway-error``;
- a reset or disconnect after the request went out (UC, UPE, UR) and a per-try timeout:
  ``reset``, ``5xx``, ``gateway-error``; an HTTP/2 REFUSED_STREAM also ``refused-stream``
  and ``reset-before-request``;
- a response: ``5xx`` (any 5xx), ``gateway-error`` (502, 503, 504), ``retriable-4xx`` (409),
  ``retriable-status-codes`` (the policy's list or ``x-envoy-retriable-status-codes``),
  ``retriable-headers`` (a header matcher on the response), ``envoy-ratelimited``
  (``x-envoy-ratelimited`` in the response); ``retry_grpc_on``-style conditions
  (``cancelled``, ``deadline-exceeded``, ``internal``, ``resource-exhausted``,
  ``unavailable``) on the ``grpc-status`` of a trailers-only response. A response carrying
  ``x-envoy-overloaded`` is never retried.

Request headers ``x-envoy-retry-on``, ``x-envoy-retry-grpc-on``, ``x-envoy-max-retries``,
``x-envoy-retriable-status-codes`` and ``x-envoy-upstream-rq-per-try-timeout-ms`` (which reach
the router only on internal requests) add to or override the policy, as in Envoy.

Refused, naming the field, because they are not built: ``per_try_idle_timeout``,
``retry_priority``, ``rate_limited_retry_back_off``, ``retriable_request_headers``,
``retry_options_predicates`` and host predicates other than ``previous_hosts``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trioproxy.config.types import duration
from trioproxy.errors import ConfigError, UpstreamError
from trioproxy.http.headers import Headers
from trioproxy.http.matchers import header_matcher

log = logging.getLogger(__name__)

_HTTP_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "envoy-ratelimited",
        "http3-post-connect-failure",  # no HTTP/3 upstreams: never applies
    }
)
_GRPC_ON = {
    "cancelled": "1",
    "deadline-exceeded": "4",
    "resource-exhausted": "8",
    "internal": "13",
    "unavailable": "14",
}
_NOT_BUILT = (
    "per_try_idle_timeout",
    "retry_priority",
    "rate_limited_retry_back_off",
    "retriable_request_headers",
    "retry_options_predicates",
)
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_PREVIOUS_HOSTS_TYPE = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)


def _conditions(value: str) -> frozenset[str]:
    """The known conditions of a comma-separated ``retry_on``; unknown ones are ignored, as
    Envoy ignores them (with a warning here)."""
    known = set()
    for token in value.split(","):
        token = token.strip()
        if not token:
            continue
        if token in _HTTP_ON or token in _GRPC_ON:
            known.add(token)
        else:
            log.warning("retry_on: unknown condition %r ignored", token)
    return frozenset(known)


@attrs.frozen
class RetryPolicy:
    retry_on: frozenset[str] = frozenset()
    num_retries: int = 1
    per_try_timeout: float | None = None
    retriable_status_codes: frozenset[int] = frozenset()
    retriable_headers: tuple[Callable[[Headers], bool], ...] = ()
    base_interval: float = 0.025
    max_interval: float = 0.25
    #: ``envoy.retry_host_predicates.previous_hosts``: a retry avoids the hosts tried before.
    previous_hosts: bool = False
    host_selection_max_attempts: int = 1


def compile_retry_policy(d: Mapping[str, Any] | None) -> RetryPolicy | None:
    """A ``config.route.v3.RetryPolicy`` (YAML/JSON form), or ``ConfigError`` naming the field."""
    if d is None:
        return None
    for name in _NOT_BUILT:
        if name in d:
            raise ConfigError("not supported yet", path=f"retry_policy.{name}")
    previous_hosts = False
    for i, pred in enumerate(d.get("retry_host_predicate", ())):
        type_url = (pred.get("typed_config") or {}).get("@type")
        if pred.get("name") == _PREVIOUS_HOSTS or type_url == _PREVIOUS_HOSTS_TYPE:
            previous_hosts = True
        else:
            raise ConfigError(
                f"retry host predicate {pred.get('name') or type_url!r} is not supported yet "
                f"(only {_PREVIOUS_HOSTS})",
                path=f"retry_policy.retry_host_predicate[{i}]",
            )
    try:
        base = duration(d.get("retry_back_off", {}).get("base_interval"), 0.025)
        cap = duration(d.get("retry_back_off", {}).get("max_interval"), None)
        per_try = duration(d.get("per_try_timeout"), None)
    except ConfigError as exc:
        raise exc.at("retry_policy") from None
    assert base is not None
    if base <= 0:
        raise ConfigError(
            "must be greater than 0", path="retry_policy.retry_back_off.base_interval"
        )
    if cap is None:
        cap = base * 10
    elif cap < base:
        raise ConfigError(
            "max_interval must be greater than or equal to the base_interval",
            path="retry_policy.retry_back_off.max_interval",
        )
    headers = []
    for i, m in enumerate(d.get("retriable_headers", ())):
        try:
            headers.append(header_matcher(m))
        except ConfigError as exc:
            raise exc.at(f"retry_policy.retriable_headers[{i}]") from None
    num = d.get("num_retries")
    return RetryPolicy(
        retry_on=_conditions(str(d.get("retry_on", ""))),
        num_retries=1 if num is None else int(num),
        per_try_timeout=per_try or None,
        retriable_status_codes=frozenset(int(c) for c in d.get("retriable_status_codes", ())),
        retriable_headers=tuple(headers),
        base_interval=base,
        max_interval=cap,
        previous_hosts=previous_hosts,
        host_selection_max_attempts=int(d.get("host_selection_retry_max_attempts", 1) or 1),
    )


_EMPTY = RetryPolicy()
_NO_HEADERS = Headers([])


class RetryState:
    """The retries of one request. ``None`` from ``create`` when nothing can be retried."""

    __slots__ = (
        "policy",
        "retry_on",
        "remaining",
        "status_codes",
        "last_error",
        "_backoff_step",
        "_rng",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        retry_on: frozenset[str],
        remaining: int,
        status_codes: frozenset[int],
        rng: Callable[[], float],
    ) -> None:
        self.policy = policy
        self.retry_on = retry_on
        self.remaining = remaining
        self.status_codes = status_codes
        #: the last attempt's upstream failure, kept by the router
        self.last_error: UpstreamError | None = None
        self._backoff_step = 1
        self._rng = rng

    @classmethod
    def create(
        cls,
        policy: RetryPolicy | None,
        headers: Headers | None,
        rng: Callable[[], float] = random.random,
    ) -> RetryState | None:
        """The state for a request with these (internal-only) control headers, if any
        (``None``: an external request, which has none)."""
        if headers is None:
            headers = _NO_HEADERS
        on_header = headers.get("x-envoy-retry-on")
        grpc_header = headers.get("x-envoy-retry-grpc-on")
        if policy is None and on_header is None and grpc_header is None:
            return None
        policy = policy or _EMPTY
        retry_on = policy.retry_on
        if on_header:
            retry_on = retry_on | _conditions(on_header)
        if grpc_header:
            retry_on = retry_on | _conditions(grpc_header)
        remaining = policy.num_retries
        max_header = headers.get("x-envoy-max-retries")
        if max_header is not None and max_header.isdecimal():
            remaining = int(max_header)
        codes = policy.retriable_status_codes
        codes_header = headers.get("x-envoy-retriable-status-codes")
        if codes_header:
            extra = {int(c) for c in codes_header.split(",") if c.strip().isdecimal()}
            codes = codes | extra
        if not retry_on or remaining <= 0:
            return None
        return cls(policy, retry_on, remaining, codes, rng)

    # -- what the router asks ------------------------------------------------------------
    def wants_failure(self, flag: str, *, refused: bool) -> bool:
        """Would an upstream failure with this response flag be retried? ``refused``: the
        upstream said it never processed the request (HTTP/2 REFUSED_STREAM)."""
        on = self.retry_on
        if flag == "UO":  # overflow: more attempts would only add load
            return False
        if "reset" in on or "5xx" in on or "gateway-error" in on:
            return True
        if flag == "UF":
            return "connect-failure" in on or "reset-before-request" in on
        if refused:
            return "refused-stream" in on or "reset-before-request" in on
        return False

    def may_retry(self, err: UpstreamError) -> bool:
        """Could this failure still be retried (condition met, attempts left)?"""
        return self.remaining > 0 and self.wants_failure(err.flag, refused=err.unprocessed)

    def wants_response(self, status: int, headers: Headers) -> bool:
        """Would a response with this head be retried?"""
        if "x-envoy-overloaded" in headers:
            return False
        on = self.retry_on
        if status >= 500 and "5xx" in on:
            return True
        if status in (502, 503, 504) and "gateway-error" in on:
            return True
        if status == 409 and "retriable-4xx" in on:
            return True
        if "retriable-status-codes" in on and status in self.status_codes:
            return True
        if "envoy-ratelimited" in on and "x-envoy-ratelimited" in headers:
            return True
        if "retriable-headers" in on and any(m(headers) for m in self.policy.retriable_headers):
            return True
        grpc_status = headers.get("grpc-status")
        if grpc_status is not None:
            return any(_GRPC_ON.get(c) == grpc_status for c in on)
        return False

    def take(self) -> float | None:
        """Spend one retry: the back-off to wait before it, or ``None`` when none is left."""
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        p = self.policy
        ceiling = min(p.base_interval * ((1 << self._backoff_step) - 1), p.max_interval)
        if ceiling < p.max_interval:
            self._backoff_step += 1
        return self._rng() * ceiling


__all__ = ["RetryPolicy", "RetryState", "compile_retry_policy"]

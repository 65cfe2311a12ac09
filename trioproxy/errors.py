"""The package's one exception tree.

Errors carry structured hints instead of being parsed from messages: a config error knows the
field path and where in the file it came from; a protocol error knows which HTTP status to
answer with and whether the connection can live on (after h11's ``error_status_hint``).
Foreign exceptions (OSError, ssl.SSLError, h2 errors …) are mapped at the boundary where they
enter our code.
"""

from __future__ import annotations


class TrioproxyError(Exception):
    """Base of every exception trioproxy raises on purpose."""


class ConfigError(TrioproxyError):
    """A configuration that Envoy would reject.

    ``path`` is the field path as Envoy prints it (``static_resources.listeners[0].name``),
    ``line`` and ``column`` are 1-based positions in the source file when known.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str = "",
        line: int | None = None,
        column: int | None = None,
        source: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        self.column = column
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.source:
            where = self.source
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        parts = [p for p in (where, self.path) if p]
        head = ": ".join(parts)
        return f"{head}: {self.reason}" if head else self.reason

    def at(self, path: str, line: int | None = None, column: int | None = None) -> ConfigError:
        """Return a copy located at ``path`` (used when an inner builder raised without one)."""
        return ConfigError(
            self.reason,
            path=path if not self.path else f"{path}.{self.path}",
            line=self.line if self.line is not None else line,
            column=self.column if self.column is not None else column,
            source=self.source,
        )


class ProtocolError(TrioproxyError):
    """The peer broke the HTTP protocol.

    ``status_hint`` is what a server answers with (400, 413, 414, 431 …);
    ``close`` says whether the connection must be closed afterwards (always true for
    framing errors, where the rest of the byte stream cannot be trusted).
    ``details`` is Envoy's response-code-details string (``http1.codec_error``).
    """

    def __init__(
        self,
        reason: str,
        *,
        status_hint: int = 400,
        close: bool = True,
        details: str = "http1.codec_error",
    ) -> None:
        self.reason = reason
        self.status_hint = status_hint
        self.close = close
        self.details = details
        super().__init__(reason)


class UpstreamError(TrioproxyError):
    """Talking to an upstream failed; ``flag`` is Envoy's response flag (UF, UC, URX …)."""

    def __init__(
        self,
        reason: str,
        *,
        flag: str,
        unprocessed: bool = False,
        transport: str = "",
        timeout: bool = False,
    ) -> None:
        self.reason = reason
        self.flag = flag
        #: The upstream certainly did not act on the request (an HTTP/2 REFUSED_STREAM, a
        #: stream above a GOAWAY's last stream id): safe to send again (RFC 9113 §8.7).
        self.unprocessed = unprocessed
        #: A connect that failed: Envoy's transport failure reason (``delayed connect error:
        #: Connection refused``), or ``timeout`` when ``connect_timeout`` ran out first.
        self.transport = transport
        self.timeout = timeout
        super().__init__(f"{flag}: {reason}")


def config_error_in(exc: BaseException) -> ConfigError | None:
    """The ``ConfigError`` that ``exc`` is or that a nursery's exception group carries
    (a listener that cannot bind fails inside the server's nursery), else None."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = config_error_in(inner)
            if found is not None:
                return found
    return None

"""Upstream connections that never open, through real Envoy and trioproxy: how each proxy
counts them (``upstream_cx_connect_fail``/``_timeout``, ``upstream_cx_destroy{,_local,_remote}``
and the cluster's ``ssl.*`` counters), what the client gets (status and body) and what the
access log says (response code details, transport failure reason). A TLS failure's reason
is compared by its name (``WRONG_VERSION_NUMBER``): BoringSSL's numeric codes are its own.

One cluster per way of failing, each routed by its path:

- ``refused``: nothing listens;
- ``timeout``: a listener whose accept queue is full, so the SYN is never answered;
- ``tls_closed``: TLS to a server that closes as soon as it accepts;
- ``tls_silent``: TLS to a server that accepts and never answers (the connect timeout covers
  the handshake);
- ``tls_plain``: TLS to a plaintext HTTP server, which answers the ClientHello with a 400;
- ``tls_untrusted``: TLS to a server whose certificate is from a CA the cluster does not trust.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from tests.support import file_access_log

from .harness import build_request, find_envoy, free_port, http_config, run_proxy, send_raw

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(find_envoy() is None, reason="envoy binary not found"),
]

CASES = ("refused", "timeout", "tls_closed", "tls_silent", "tls_plain", "tls_untrusted")
TLS = """transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
"""


def _cluster(name: str, port: int, tls: str = "") -> str:
    block = "".join("  " + line + "\n" for line in tls.splitlines())
    return f"""
- name: {name}
  type: STATIC
  connect_timeout: 0.5s
{block}  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
"""


@contextlib.contextmanager
def _full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full: a new connect is never answered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(listener.getsockname())
        fillers.append(s)
    try:
        yield listener.getsockname()[1]
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def _serve(nursery: trio.Nursery, handler: object) -> int:
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _close_at_once(stream: trio.SocketStream) -> None:
    await stream.aclose()


async def _never_answer(stream: trio.abc.Stream) -> None:
    """Reads until the peer closes (over TLS: fails in the handshake, which is the point)."""
    with trio.move_on_after(10), contextlib.suppress(trio.BrokenResourceError):
        while await stream.receive_some(65536):
            pass


async def _plain_http(stream: trio.SocketStream) -> None:
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")


def _untrusted_server(tmp: Path) -> tuple[ssl.SSLContext, str]:
    """A server context with a certificate from one CA, and a CA file of another."""
    ca, other = trustme.CA(), trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    path = tmp / "other-ca.pem"
    other.cert_pem.write_to_path(str(path))
    return context, str(path)


LOG = file_access_log(
    "ACCESS_LOG_PATH", "%REQ(:path)% %RESPONSE_CODE_DETAILS% %UPSTREAM_TRANSPORT_FAILURE_REASON%"
)
_BORINGSSL = re.compile(r"TLS_error:\|\d+:[^:]*:OPENSSL_internal:([^:]*):[^ }]*?TLS_error_end")


def _tls_named(text: str) -> str:
    """``TLS_error:|268435703:SSL_routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end``
    (Envoy) and ``TLS_error:_WRONG_VERSION_NUMBER`` (ours) as ``TLS(WRONG_VERSION_NUMBER)``."""
    text = _BORINGSSL.sub(r"TLS(\1)", text)
    text = re.sub(r"TLS_error:_([A-Za-z_]+)", r"TLS(\1)", text)
    # a server that closes at once: the ClientHello's write fails, or the read after it sees a
    # reset or an end of file, as timing has it, in either proxy
    return re.sub(
        r"TLS\((Broken_pipe|Connection_reset_by_peer|UNEXPECTED_EOF_WHILE_READING)\)",
        "TLS(closed)",
        text,
    )


async def _outcomes(
    kind: str, template: str, log: Path
) -> tuple[dict[str, tuple[int, dict[str, int]]], list[tuple[int, bytes]], list[str]]:
    template = template.replace("ACCESS_LOG_PATH", str(log))
    async with run_proxy(kind, template, free_port()) as proxy:
        statuses = {}
        replies = []
        for name in CASES:
            resp = await send_raw(
                proxy.listener_port, build_request("GET", f"/{name}", host="example.com")
            )
            statuses[name] = resp.status
            replies.append((resp.status, resp.body))
        await trio.sleep(0.5)  # (nothing left to count; a margin for the slowest)
        resp = await send_raw(proxy.admin_port, build_request("GET", "/stats", host="a"))
    stats = dict(line.split(": ", 1) for line in resp.body.decode().splitlines() if ": " in line)
    out = {}
    for name in CASES:
        prefix = f"cluster.{name}."
        counters = {
            key.removeprefix(prefix): int(value)
            for key, value in stats.items()
            if key.startswith(prefix)
            and value.isdigit()
            and int(value)
            and ("upstream_cx_" in key or ".ssl." in key)
            and not key.endswith(("_ms", "expiration_unix_time_seconds"))
        }
        out[name] = (statuses[name], counters)
    lines = [_tls_named(line) for line in (await trio.Path(log).read_text()).splitlines()]
    return out, replies, lines


async def test_connections_that_never_open_count_as_in_envoy(tmp_path: Path) -> None:
    server_context, other_ca = _untrusted_server(tmp_path)
    with _full_backlog() as timeout_port:
        async with trio.open_nursery() as nursery:
            ports = {
                "refused": free_port(),
                "timeout": timeout_port,
                "tls_closed": await _serve(nursery, _close_at_once),
                "tls_silent": await _serve(nursery, _never_answer),
                "tls_plain": await _serve(nursery, _plain_http),
            }
            listeners = await trio.open_ssl_over_tcp_listeners(0, server_context, host="127.0.0.1")
            ports["tls_untrusted"] = listeners[0].transport_listener.socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, _never_answer, listeners)
            untrusted = (
                TLS
                + f"""    common_tls_context:
      validation_context:
        trusted_ca: {{filename: {other_ca}}}
"""
            )
            tls = {
                "tls_closed": TLS,
                "tls_silent": TLS,
                "tls_plain": TLS,
                "tls_untrusted": untrusted,
            }
            routes = "".join(
                f"""
- match: {{path: "/{name}"}}
  route: {{cluster: {name}}}"""
                for name in CASES
            )
            clusters = "".join(_cluster(n, ports[n], tls.get(n, "")) for n in CASES)
            template = http_config(routes, clusters=clusters, hcm_extra=LOG)
            envoy = await _outcomes("envoy", template, tmp_path / "envoy.log")
            ours = await _outcomes("trioproxy", template, tmp_path / "trioproxy.log")
            nursery.cancel_scope.cancel()
    assert all(status == 503 for status, _ in envoy[0].values()), envoy
    assert ours[0] == envoy[0]
    assert ours[1] == envoy[1]
    assert ours[2] == envoy[2]

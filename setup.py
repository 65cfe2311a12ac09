"""Optional compilation of the hot-path modules with mypyc.

``TRIOPROXY_MYPYC=1 pip install --no-build-isolation .`` compiles the modules listed in
``COMPILED`` to C extensions. It needs an environment with the project's dependencies, mypy
and types-PyYAML (mypyc type-checks before it compiles); ``nox -s tests_compiled`` and
``nox -s bench`` do all of it. The modules stay plain typed Python: the same files run
interpreted in every other install, and the test suite runs against both. Without the
variable this file adds nothing and the package is pure Python. Editable installs are never
compiled: a compiled module next to its source would hide later edits of it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

#: Typed modules of the hot path (HTTP/1.1 and HTTP/2) (see docs/benchmarks.md for what it buys).
COMPILED = [
    "trioproxy/http/headers.py",
    "trioproxy/http/h1/events.py",
    "trioproxy/http/h1/common.py",
    "trioproxy/http/h1/serialize.py",
    "trioproxy/http/h1/_httptools.py",
    "trioproxy/http/request_headers.py",
    "trioproxy/http/request_head.py",
    "trioproxy/http/matchers.py",
    "trioproxy/http/local_reply.py",
    "trioproxy/http/conn_manager.py",
    "trioproxy/http/h2_connection.py",
    "trioproxy/http/h2_frames.py",
    "trioproxy/http/h2_server.py",
    "trioproxy/http/h2_headers.py",
    "trioproxy/http/hpack.py",
    "trioproxy/http/h2_writer.py",
    "trioproxy/http/h2_client_proto.py",
    "trioproxy/upstream/h2_client.py",
    "trioproxy/upstream/http1_client.py",
    "trioproxy/upstream/pool.py",
    "trioproxy/upstream/circuit_breaker.py",
    "trioproxy/upstream/lb.py",
    "trioproxy/watchdog.py",
    "trioproxy/io.py",
    "trioproxy/tls_stream.py",
    "trioproxy/stats/store.py",
    "trioproxy/http/rds.py",
    "trioproxy/upstream/cluster_manager.py",
    "trioproxy/http/route_table.py",
    "trioproxy/http/stream_info.py",
]

#: Built-in plugins to compile. plugins/ installs as ``trioproxy_plugins``, and mypyc names a
#: module after its path, so they are compiled from a copy under that name.
COMPILED_PLUGINS = ["router/filter.py"]
STAGING = Path("build") / "mypyc-src"

ext_modules = []
if os.environ.get("TRIOPROXY_MYPYC") == "1" and "editable_wheel" not in sys.argv:
    from mypyc.build import mypycify

    shutil.rmtree(STAGING, ignore_errors=True)
    shutil.copytree("plugins", STAGING / "trioproxy_plugins")
    plugins = [str(STAGING / "trioproxy_plugins" / p) for p in COMPILED_PLUGINS]
    # One C file per module instead of one for all: the same code, built in 2m37s instead
    # of 3m47s here (the C compiler's time grows faster than the file), at the same CPU per
    # proxied request (docs/benchmarks.md).
    ext_modules = mypycify([*COMPILED, *plugins], opt_level="3", multi_file=True)

setup(ext_modules=ext_modules)

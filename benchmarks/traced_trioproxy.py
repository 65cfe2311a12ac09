#!/usr/bin/env python3
"""trioproxy with tracemalloc, for bench_idle.py: the first SIGUSR2 starts tracing, each dumps
a snapshot.

Tracing starts at the first signal, not at startup: with 25 frames per allocation, importing
trioproxy alone takes 20 s, and only what is allocated after the first snapshot matters (what
was allocated before and is still alive is in neither snapshot's difference).
``BENCH_TRACEMALLOC_FRAMES`` frames are kept per allocation (default 25, enough to reach
trioproxy's own frame under trio's); the k-th SIGUSR2 (from 0) writes
``$BENCH_SNAPSHOT_PREFIX.k`` (to a temporary name, then renamed, so a waiting reader never sees
half a file). The arguments are trioproxy's command line (``serve -c FILE ...``).
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import tracemalloc
from types import FrameType

_FRAMES = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "25"))
_PREFIX = os.environ["BENCH_SNAPSHOT_PREFIX"]
_COUNT = itertools.count()


def _dump(signum: int, frame: FrameType | None) -> None:
    if not tracemalloc.is_tracing():
        tracemalloc.start(_FRAMES)
    path = f"{_PREFIX}.{next(_COUNT)}"
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.replace(path + ".tmp", path)


signal.signal(signal.SIGUSR2, _dump)

from trioproxy.cli import main  # noqa: E402  (the handler is in place before the server runs)

sys.exit(main(sys.argv[1:]))

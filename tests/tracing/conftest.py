from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "examples" / "jaeger"))

from collector import Store, serve


class Collector:
    def __init__(self, port: int, store: Store) -> None:
        self.port = port
        self.store = store

    def spans(self) -> list[dict[str, Any]]:
        return [s for t in self.store.traces() for s in t]


@pytest.fixture
def collector() -> Iterator[Collector]:
    server, store = serve("127.0.0.1", 0)
    try:
        yield Collector(server.server_address[1], store)
    finally:
        server.shutdown()
        server.server_close()

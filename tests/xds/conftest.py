from __future__ import annotations

from collections.abc import Iterator

import pytest

from trioproxy.testing.xds_server import AdsServer


@pytest.fixture
def ads() -> Iterator[AdsServer]:
    server = AdsServer()
    server.start()
    yield server
    server.stop()

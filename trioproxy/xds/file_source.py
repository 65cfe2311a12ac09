"""Resources from a watched file (``path_config_source``), in DiscoveryResponse shape.

The file holds ``version_info`` and ``resources`` (each an ``Any`` with ``@type``), as YAML or
JSON. It is polled for changes of size, modification time or inode — so both an in-place
write and Envoy's recommended atomic rename are seen — and each new content is applied like a
gRPC response: a bad file is rejected whole (counted, logged, shown in ``/config_dump``) and
the last good resources stay.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import trio

from trioproxy.config import loader
from trioproxy.config.schema import canonicalize
from trioproxy.errors import ConfigError
from trioproxy.xds import resources as R
from trioproxy.xds.manager import XdsManager
from trioproxy.xds.sotw import Rejection, TypeState

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25


class FileSource:
    def __init__(
        self,
        manager: XdsManager,
        path: str,
        type_url: str,
        *,
        opaque_types: tuple[str, ...] = (),
    ) -> None:
        self.manager = manager
        self.path = path
        self.type_url = type_url
        self.opaque_types = opaque_types
        self.state = TypeState(type_url, wildcard=True)
        self._seen: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"<FileSource {self.path}>"

    def interest_changed(self, type_url: str) -> None:
        """A file holds what it holds: names are filtered by the manager."""

    def rejection(self, type_url: str) -> Rejection | None:
        return self.state.rejection

    def received(self, type_url: str) -> bool:
        return self.state.received

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    async def run(self) -> None:
        if self.type_url == R.LISTENER:
            await self.manager.wait_clusters_initialized()
        while True:
            stamp = self._stamp()
            if stamp is not None and stamp != self._seen:
                self._seen = stamp
                await self.load()
            await trio.sleep(POLL_INTERVAL)

    async def load(self) -> None:
        version = ""
        try:
            doc = loader.load_file(self.path)
            response = canonicalize(
                "envoy.service.discovery.v3.DiscoveryResponse",
                doc.data,
                opaque_types=self.opaque_types,
                locate=doc.locate,
            )
            version = str(response.get("version_info", ""))
            items: list[Mapping[str, Any]] = []
            for i, res in enumerate(response.get("resources", [])):
                if res.get("@type") != self.type_url:
                    raise ConfigError(
                        f"resource of type {res.get('@type')} in a {self.type_url} file",
                        path=f"resources[{i}]",
                    )
                items.append({k: v for k, v in res.items() if k != "@type"})
        except ConfigError as exc:
            self.manager.reject(self.type_url, version, [])
            self._rejected(version, exc)
            return
        try:
            await self.manager.apply(self.type_url, version, items, self)
        except ConfigError as exc:
            self._rejected(version, exc)
            return
        self.state.ack(version, "")
        log.info("%s: applied version %r", self.path, version)

    def _rejected(self, version: str, exc: ConfigError) -> None:
        log.warning("%s: rejected: %s", self.path, exc)
        self.state.nack(version, "", str(exc))

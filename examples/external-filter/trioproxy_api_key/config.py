"""The filter's config: the YAML under ``typed_config``, read once, checked, frozen."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import attrs

from trioproxy.errors import ConfigError


def fingerprint(key: str) -> str:
    """Keys are kept as SHA-256 digests, so a config dump does not show them."""
    return hashlib.sha256(key.encode()).hexdigest()


@attrs.frozen
class ApiKeyConfig:
    header: str = "x-api-key"
    #: key digest → client name
    clients: Mapping[str, str] = attrs.field(factory=dict)
    #: the header the upstream gets with the client's name (the key itself is removed)
    client_header: str = "x-api-client"
    disabled: bool = False

    @classmethod
    def from_proto(cls, d: Mapping[str, Any]) -> ApiKeyConfig:
        if d.get("disabled"):
            return cls(disabled=True)
        clients: dict[str, str] = {}
        for i, entry in enumerate(d.get("clients", ())):
            name, key = entry.get("name"), entry.get("key")
            if not name or not key:
                raise ConfigError("a client needs a name and a key", path=f"clients[{i}]")
            digest = fingerprint(str(key))
            if digest in clients:
                raise ConfigError(
                    f"the key of {name} is already {clients[digest]}'s", path=f"clients[{i}].key"
                )
            clients[digest] = str(name)
        if not clients:
            raise ConfigError("at least one client is required", path="clients")
        return cls(
            header=str(d.get("header", "x-api-key")).lower(),
            clients=clients,
            client_header=str(d.get("client_header", "x-api-client")).lower(),
        )

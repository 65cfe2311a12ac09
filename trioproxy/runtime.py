"""The runtime: ``layered_runtime`` values that change behaviour without a config reload.

Theory of operation (Envoy's ``LoaderImpl``): layers in bootstrap order, a later layer's value
for a key winning over an earlier one's. A ``static_layer`` is a struct flattened to dotted
keys; a ``disk_layer`` is a directory tree (``symlink_root``/``subdirectory``, and the service
cluster's subdirectory too with ``append_service_cluster``) whose file paths are keys, dots for
slashes, and whose contents are values — re-read when the tree changes (polled every second;
deployments swap the symlink); an ``admin_layer`` holds what ``POST /runtime_modify`` sets.
Readers (routes' ``runtime_fraction``, weighted clusters' ``runtime_key_prefix``) ask at request
time through ``current()``. Stats: ``runtime.{num_keys,num_layers,load_success,load_error,
admin_overrides_active,override_dir_exists,override_dir_not_exists}``.

Not built: ``rtds_layer`` (refused by name).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from trioproxy.config.types import DENOMINATORS
from trioproxy.errors import ConfigError
from trioproxy.stats import Store
from trioproxy.stats.store import NEVER_IMPORT

log = logging.getLogger(__name__)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}{k}.", v, out)
        return
    key = prefix[:-1]
    if isinstance(value, bool):
        out[key] = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        out[key] = str(int(value))
    else:
        out[key] = str(value)


def _read_tree(root: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for directory, _dirs, files in os.walk(root, followlinks=True):
        rel = os.path.relpath(directory, root)
        parts = [] if rel == "." else rel.split(os.sep)
        for name in files:
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    out[".".join([*parts, name])] = f.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("runtime: cannot read %s: %s", os.path.join(directory, name), exc)
    return out


def _tree_signature(root: str) -> tuple[Any, ...]:
    sig: list[Any] = [os.path.realpath(root)]
    for directory, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            try:
                st = os.stat(os.path.join(directory, name))
            except OSError:
                continue
            sig.append((directory, name, st.st_mtime_ns, st.st_size))
    return tuple(sig)


class Layer:
    def __init__(self, name: str, kind: str, values: dict[str, str], roots: tuple[str, ...] = ()):
        self.name = name
        self.kind = kind  # "static", "disk" or "admin"
        self.values = values
        self.roots = roots
        self.signature: tuple[Any, ...] = ()


class Runtime:
    def __init__(self, layers: list[Layer], store: Store | None = None) -> None:
        self.layers = layers
        self._merged: dict[str, str] = {}
        scope = (store or Store()).scope("runtime.")
        # Every worker of --concurrency N loads the same layers: NeverImport.
        self.num_keys = scope.gauge("num_keys", NEVER_IMPORT)
        self.num_layers = scope.gauge("num_layers", NEVER_IMPORT)
        self.load_success = scope.counter("load_success", NEVER_IMPORT)
        self.load_error = scope.counter("load_error", NEVER_IMPORT)
        self.admin_overrides = scope.gauge("admin_overrides_active", NEVER_IMPORT)
        self.dir_exists = scope.counter("override_dir_exists", NEVER_IMPORT)
        self.dir_missing = scope.counter("override_dir_not_exists", NEVER_IMPORT)
        self.reload()

    @classmethod
    def from_bootstrap(
        cls, d: Mapping[str, Any] | None, store: Store | None = None, service_cluster: str = ""
    ) -> Runtime:
        layers: list[Layer] = []
        for i, raw in enumerate((d or {}).get("layers", ())):
            name = str(raw.get("name", ""))
            path = f"layered_runtime.layers[{i}]"
            if "static_layer" in raw:
                values: dict[str, str] = {}
                _flatten("", raw["static_layer"] or {}, values)
                layers.append(Layer(name, "static", values))
            elif "disk_layer" in raw:
                disk = raw["disk_layer"] or {}
                base = str(disk.get("symlink_root", ""))
                root = os.path.join(base, str(disk.get("subdirectory", "")))
                roots = [root]
                if disk.get("append_service_cluster") and service_cluster:
                    roots.append(os.path.join(root, service_cluster))
                layers.append(Layer(name, "disk", {}, tuple(roots)))
            elif "admin_layer" in raw:
                layers.append(Layer(name, "admin", {}))
            else:
                kind = next((k for k in raw if k != "name"), "none")
                raise ConfigError(
                    f"runtime layer {kind} is not supported yet", path=f"{path}.{kind}"
                )
        return cls(layers, store)

    # -- reading -------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        return self._merged.get(key)

    def get_int(self, key: str, default: int) -> int:
        value = self._merged.get(key)
        if value is None:
            return default
        try:
            return int(float(value))
        except ValueError:
            return default

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        """Envoy's ``featureEnabled(key, FractionalPercent)``: the runtime's value for ``key``
        (an integer numerator over the default's denominator) or the default, drawn with
        ``random_value``."""
        value = self._merged.get(key) if key else None
        if value is not None:
            try:
                numerator = int(float(value))
            except ValueError:
                pass
        return random_value % denominator < numerator

    # -- changing ------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the disk layers and merge every layer."""
        for layer in self.layers:
            if layer.kind != "disk":
                continue
            values: dict[str, str] = {}
            for root in layer.roots:
                if os.path.isdir(root):
                    self.dir_exists.value += 1
                    values.update(_read_tree(root))
                else:
                    self.dir_missing.value += 1
            layer.values = values
            layer.signature = tuple(_tree_signature(r) for r in layer.roots)
        merged: dict[str, str] = {}
        for layer in self.layers:
            merged.update(layer.values)
        self._merged = merged
        self.num_keys.set(len(merged))
        self.num_layers.set(len(self.layers))
        self.admin_overrides.set(sum(len(lyr.values) for lyr in self.layers if lyr.kind == "admin"))
        self.load_success.value += 1

    def modify(self, updates: Mapping[str, str]) -> bool:
        """``/runtime_modify``: set (or, with an empty value, remove) admin-layer keys."""
        admin = next((lyr for lyr in self.layers if lyr.kind == "admin"), None)
        if admin is None:
            return False
        for key, value in updates.items():
            if value == "":
                admin.values.pop(key, None)
            else:
                admin.values[key] = value
        self.reload()
        return True

    def dump(self) -> dict[str, Any]:
        """``/runtime``'s JSON."""
        entries = {}
        for key in sorted(self._merged):
            entries[key] = {
                "final_value": self._merged[key],
                "layer_values": [lyr.values.get(key, "") for lyr in self.layers],
            }
        return {"layers": [lyr.name for lyr in self.layers], "entries": entries}

    async def watch(self, interval: float = 1.0) -> None:
        """Re-read the disk layers when their trees change (a symlink swap included)."""
        disks = [lyr for lyr in self.layers if lyr.kind == "disk"]
        if not disks:
            return
        while True:
            await trio.sleep(interval)
            changed = any(
                tuple(_tree_signature(r) for r in lyr.roots) != lyr.signature for lyr in disks
            )
            if changed:
                self.reload()


_current = Runtime([])


@attrs.frozen
class RuntimeFraction:
    """A ``RuntimeFractionalPercent`` (``filter_enabled`` and the like): ``default_value``,
    unless the runtime has a value for ``runtime_key`` (a numerator over the default's
    denominator), drawn per request."""

    numerator: int
    denominator: int = 100
    key: str = ""

    @classmethod
    def from_proto(cls, d: Mapping[str, Any] | None, default_percent: int) -> RuntimeFraction:
        if d is None:
            return cls(default_percent, 100)
        value = d.get("default_value") or {}
        denominator = DENOMINATORS.get(value.get("denominator", "HUNDRED"))
        if denominator is None:
            raise ConfigError("invalid enum value", path="default_value.denominator")
        return cls(int(value.get("numerator", 0)), denominator, str(d.get("runtime_key", "")))

    def enabled(self, rng: Callable[[], float] = random.random) -> bool:
        if self.key:
            return _current.feature_enabled(
                self.key, self.numerator, self.denominator, random.getrandbits(32)
            )
        if self.numerator >= self.denominator:
            return True
        return self.numerator > 0 and rng() * self.denominator < self.numerator


def current() -> Runtime:
    """The runtime of the server running in this process (installed while it runs; an empty
    one otherwise)."""
    return _current


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


ALWAYS = RuntimeFraction(100)
NEVER = RuntimeFraction(0)

"""Envoy's admin endpoint: ``serve_admin`` over an ``AdminBackend`` (see ``backend``)."""

from trioproxy.admin.backend import AdminBackend, ClusterView, ConfigDumpSources, HostView
from trioproxy.admin.server import serve_admin

__all__ = ["AdminBackend", "ClusterView", "ConfigDumpSources", "HostView", "serve_admin"]

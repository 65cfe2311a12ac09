"""trioproxy: an Envoy-compatible L4/L7 proxy on trio, with filters as plain async plugins."""

__version__ = "0.1.0"

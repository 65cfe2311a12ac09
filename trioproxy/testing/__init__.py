"""Testing helpers for people who extend trioproxy.

``FilterHarness`` (``harness.py``) runs HTTP filters on a request in memory; ``xds_server``
is a small ADS control plane for tests of dynamic configuration.
"""

from trioproxy.testing.harness import (
    FilterHarness,
    Result,
    Scripted,
    ScriptedUpstream,
    UpstreamRequest,
)

__all__ = ["FilterHarness", "Result", "Scripted", "ScriptedUpstream", "UpstreamRequest"]

"""Access logs: Envoy's substitution formatter (``format``) and the core loggers (``loggers``).

A connection manager builds each ``access_log`` entry with
``loggers.build_access_log(entry, registry.access_loggers, context)`` and calls ``log(info)``
once per finished stream; the server runs ``loggers.run_flusher()`` in its root nursery.
"""

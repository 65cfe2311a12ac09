"""xDS: configuration pushed by a control plane (gRPC) or read from watched files.

Theory of operation
-------------------
``resources`` decodes protobuf resources into the same canonical proto-JSON dicts a YAML
bootstrap becomes, so one loader builds static and dynamic config. ``sotw`` keeps the
state-of-the-world bookkeeping of one resource type on one stream (versions, nonces, ACK and
NACK) as a pure state machine. ``manager.XdsManager`` applies accepted resources to the running
server in make-before-break order (clusters, endpoints, listeners, routes) and remembers what
``/config_dump`` shows. ``grpc_mux`` and ``file_source`` are the transports.
"""

"""``--concurrency N``: N worker processes behind one main process.

Envoy runs N worker threads in one process; a Python proxy scales past one core with
processes. ``trioproxy serve --concurrency N`` (N > 1) runs:

- **the main process** (``supervisor``): loads and validates the config, owns the bootstrap's
  admin endpoint (``admin``), starts the workers and hands each the same immutable config
  snapshot (the canonical bootstrap, sent over a control channel, ``ipc``), restarts a worker
  that dies (with back-off, counted in ``server.worker_restarts``), merges the workers' stats,
  clusters and listeners into one admin view when asked, and drains every worker on SIGTERM,
  SIGINT or ``POST /quitquitquit``. It serves no traffic.
- **N workers** (``child``): each a full ``trioproxy.server.Server`` — listeners bound with
  ``SO_REUSEPORT`` beside the other workers' (TCP and UDP), the cluster manager with its DNS
  and health-check tasks, xDS, stats sinks, access logs. The kernel spreads new connections
  (and UDP flows, by their addresses) over the workers' sockets; a connection stays with the
  worker that accepted it.

Nothing crosses processes on a request's path: the control channel carries the config at
start-up, a once-a-second liveness ping (a worker that does not answer within 10 s is
SIGTERMed, killed 5 s later and restarted), admin requests and stats snapshots (on admin
requests for merged views, one round at a time, and every stats flush interval so that a
dead worker's counters are kept). ``/ready`` is 200 only while every worker serves.

What differs from Envoy, where the workers are threads sharing one main thread's state:
each worker has its own circuit breakers, local rate limit buckets, retry budgets, listener
connection limits, fault filter ``max_active_faults``, active health checks (N times the
health-check traffic), outlier detection, connection pools (N times the upstream
connections) and xDS client (N streams to the control plane; workers may apply an update
moments apart) — every per-process limit allows up to N times as much. Hence the default
stays ``--concurrency 1``: one process, none of this machinery, and limits that mean what
Envoy's mean. ``--concurrency 1`` runs no main process and no control channel at all.
"""

from __future__ import annotations

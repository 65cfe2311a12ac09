"""``python -m trioproxy.workers --fd N``: a worker process, started by the main process of
``trioproxy serve --concurrency N`` (see ``trioproxy.workers``); not meant to be run by hand."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

import trio

from trioproxy.workers.child import run_worker, watch_main
from trioproxy.workers.ipc import Channel


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trioproxy.workers")
    parser.add_argument("--fd", type=int, required=True, help="the control socket's descriptor")
    parser.add_argument("--main-pid", type=int, required=True, help="the main process")
    parser.add_argument("--drain-time", type=float, default=5.0, help="the server's drain time")
    args = parser.parse_args(argv)
    watch_main(args.main_pid, args.drain_time)

    async def serve() -> int:
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=args.fd))
        return await run_worker(Channel(trio.SocketStream(sock)))

    try:
        return trio.run(serve)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

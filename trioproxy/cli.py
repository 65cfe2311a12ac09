"""``trioproxy``: the command line, with Envoy's flags where they exist.

    trioproxy serve -c envoy.yaml            # or: trioproxy -c envoy.yaml, as with envoy
    trioproxy serve -c envoy.yaml --mode validate
    trioproxy validate envoy.yaml

Exit status: 0 after a clean shutdown or a valid config, 1 for a bad config, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from trioproxy import __version__, compiled_modules, mixed_install
from trioproxy.errors import ConfigError, config_error_in

if TYPE_CHECKING:
    from trioproxy.config import LoadedConfig
    from trioproxy.registry import Registry

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}


def _serve_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config-path", help="Envoy v3 bootstrap (YAML or JSON)")
    parser.add_argument("--config-yaml", help="YAML merged over the config file, as in Envoy")
    parser.add_argument("--mode", choices=("serve", "validate"), default="serve")
    parser.add_argument("--service-cluster", default="", help="local cluster name (node.cluster)")
    parser.add_argument("--service-node", default="", help="local node id (node.id)")
    parser.add_argument("--service-zone", default="", help="local zone (node.locality.zone)")
    parser.add_argument("-l", "--log-level", default="info", choices=sorted(_LEVELS))
    parser.add_argument(
        "--concurrency",
        type=_positive,
        default=1,
        help="worker processes sharing each listening port with SO_REUSEPORT, behind a main "
        "process that serves admin and merges stats (default 1: one process, no main; "
        "see trioproxy.workers for why not the number of cores, as in Envoy)",
    )
    parser.add_argument(
        "--drain-time-s",
        type=float,
        default=5.0,
        help="how long shutdown lets in-flight requests finish (default 5)",
    )
    parser.add_argument(
        "--park-idle-after-s",
        type=_not_negative,
        default=1.0,
        help="an HTTP/1.1 keep-alive connection idle this long leaves its task until its next "
        "request, saving most of its memory; that request costs a task more (0: never park; "
        "default 1)",
    )
    parser.add_argument("--base-id", type=int, default=0, help="accepted for Envoy compatibility")
    parser.add_argument(
        "--h1-codec",
        choices=("httptools", "h11"),
        default=None,
        help="HTTP/1.1 parser (default: httptools when installed)",
    )


def _not_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trioproxy", description=__doc__.split("\n")[0])
    build = "compiled hot path (mypyc)" if compiled_modules() else "pure Python"
    parser.add_argument("--version", action="version", version=f"trioproxy {__version__}, {build}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub.add_parser("serve", help="run the proxy"))
    validate = sub.add_parser("validate", help="check a config and exit")
    validate.add_argument("config_path")
    validate.add_argument("--config-yaml")
    validate.add_argument("-l", "--log-level", default="warning", choices=sorted(_LEVELS))
    from trioproxy import iptables

    capture = sub.add_parser(
        "iptables",
        help="install (or --cleanup) the sidecar's iptables capture, like istio-iptables",
        description=iptables.__doc__.split("\n")[0] if iptables.__doc__ else None,
    )
    iptables.add_arguments(capture)
    capture.add_argument("-l", "--log-level", default="warning", choices=sorted(_LEVELS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if (
        args_list
        and args_list[0].startswith("-")
        and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "serve")  # `trioproxy -c envoy.yaml`, like `envoy -c envoy.yaml`
    args = make_parser().parse_args(args_list)
    if (reason := mixed_install()) is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=_LEVELS[args.log_level],
        format="[%(asctime)s][%(levelname)s][%(name)s] %(message)s",
        stream=sys.stderr,
    )
    if args.command == "validate":
        return _validate(args.config_path, args.config_yaml)
    if args.command == "iptables":
        from trioproxy import iptables

        return iptables.main(args)
    if args.mode == "validate":
        return _validate(args.config_path, args.config_yaml)
    return _serve(args, args_list)


def _load(path: str | None, yaml_text: str | None) -> tuple[LoadedConfig, Registry]:
    from trioproxy.config import load_bootstrap
    from trioproxy.registry import build_registry

    if not path and not yaml_text:
        raise ConfigError("no configuration: give -c FILE or --config-yaml")
    registry = build_registry()
    loaded = load_bootstrap(path=path, yaml_text=yaml_text, opaque_types=registry.opaque_types())
    return loaded, registry


def _validate(path: str | None, yaml_text: str | None) -> int:
    from trioproxy.server import Options, build

    try:
        loaded, registry = _load(path, yaml_text)
        build(loaded, Options(config_path=path or ""), registry=registry)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"configuration '{path or '<config-yaml>'}' OK")
    return 0


def _serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from trioproxy.server import Options, Server

    try:
        loaded, registry = _load(args.config_path, args.config_yaml)
        options = Options(
            service_cluster=args.service_cluster,
            service_node=args.service_node,
            service_zone=args.service_zone,
            concurrency=args.concurrency,
            drain_time=args.drain_time_s,
            park_after=args.park_idle_after_s,
            h1_codec=args.h1_codec,
            command_line=tuple(argv),
            config_path=args.config_path or "",
        )
        if args.concurrency == 1:
            run = Server(loaded, options, registry).run
        else:
            from trioproxy.workers.supervisor import Supervisor

            run = Supervisor(loaded, options, registry, _LEVELS[args.log_level]).run
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        error = config_error_in(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

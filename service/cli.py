"""The `messplus` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from .errors import ConfigError
from .logs import JsonFormatter


def _serve(args: argparse.Namespace) -> int:
    from . import config
    from .server.app import serve

    cfg = config.load(args.config)
    asyncio.run(serve(cfg, port_file=args.port_file))
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .encoder.export import export_minilm

    out = export_minilm(Path(args.out))
    print(out)
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _zoo_line(cfg) -> str:
    if cfg.zoo.models or not cfg.embedded_triton:
        return _plural(len(cfg.zoo.models), "model")
    from .demo.repository import DEFAULT_MODELS

    return f"{_plural(len(DEFAULT_MODELS), 'model')} (the demo zoo)"


def _tenants_line(cfg) -> str:
    from . import config

    tenants = cfg.tenants or config.DEFAULT_TENANTS
    alphas = ", ".join(f"{t.name} alpha {t.alpha:g}" for t in tenants[:3]) + (", ..." if len(tenants) > 3 else "")
    default = " (the default)" if not cfg.tenants else ""
    return f"{_plural(len(tenants), 'tenant')}{default}: {alphas}"


def _check_config(args: argparse.Namespace) -> int:
    from . import config
    from .routing.registry import get_policy
    from .server.security import check_grants, load_tokens
    from .state import describe as describe_state

    cfg = config.load(args.config)
    get_policy(cfg.routing.policy)
    # what serve reads once Triton is up: a bad token entry is found here, not there
    check_grants(load_tokens(cfg.security), [t.name for t in (cfg.tenants or config.DEFAULT_TENANTS)])
    where = describe_state(cfg.state, str(cfg.state_dir / "messplus.sqlite3"))
    print(f"ok: {_zoo_line(cfg)}, {_tenants_line(cfg)}, listen {cfg.server.listen}, state {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="messplus", description="SLA-keeping LLM router (MESS+) beside Triton")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the router (default: local Triton with the demo zoo, SQLite state)")
    serve.add_argument("--config", help="TOML config file (default: $MESSPLUS_CONFIG, else the embedded default)")
    serve.add_argument("--port-file", help="write the bound gRPC port to this file once serving")
    serve.set_defaults(func=_serve)

    export = sub.add_parser("export-predictor", help="export all-MiniLM-L6-v2 to ONNX (no torch needed)")
    export.add_argument("--out", default="var/minilm-l6-v2.onnx")
    export.set_defaults(func=_export)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config")
    check.set_defaults(func=_check_config)

    from .replay import add_commands
    from .statuscmd import add_command as add_status
    from .zoo.democmd import add_command as add_demo_triton

    add_status(sub)
    add_demo_triton(sub)
    add_commands(sub)
    return parser


def _fail(msg: str) -> None:
    """The one line a command that cannot go on ends with: a JSON object where `serve` had switched its log to
    JSON (`server.log_format`; a log shipper reads every line of stderr as one), else plain text."""
    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.getLogger("messplus").error(msg)
    else:
        print(f"messplus: {msg}", file=sys.stderr)


def _serves_json_logs(argv: Sequence[str]) -> bool:
    """Whether `argv` runs `serve` with `server.log_format = "json"` (a config that does not load: no)."""
    rest = [a for a in argv if a not in ("-v", "--verbose")]
    if rest and rest[0] == "serve":
        rest = rest[1:]
    elif rest and not rest[0].startswith("-"):  # another command (no command at all runs serve)
        return False
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(rest)
    from . import config

    try:
        return config.load(known.config).server.log_format == "json"
    except ConfigError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    # with JSON logs every line on stderr is one JSON object, but gRPC's C core writes text lines of its own (a
    # port it cannot bind): silenced there. It reads GRPC_VERBOSITY once, when grpc is first imported, which the
    # subcommands' modules do as the parser is built.
    if "GRPC_VERBOSITY" not in os.environ and _serves_json_logs(sys.argv[1:] if argv is None else argv):
        os.environ["GRPC_VERBOSITY"] = "NONE"
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        args = parser.parse_args(["serve", *(argv or [])])
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _fail(f"configuration error: {exc}")
        return 2
    except (OSError, RuntimeError) as exc:  # start-up failures (Triton, ports, files): one clear line, no trace
        _fail(f"cannot start: {type(exc).__name__}: {exc}")
        return 1
    except ValueError as exc:  # a bad trace, flag or file content (TraceError is one): its message, no trace
        logging.getLogger("messplus").debug("invalid input", exc_info=exc)
        _fail(f"invalid input: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

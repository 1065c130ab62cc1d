"""Command line: ``sidecar [serve] [--config FILE]``, ``sidecar check-config [--online]``, ``sidecar demo``,
``sidecar --version``; ``--help`` after any of them explains it in plain text."""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sidecar
from sidecar import config as config_module
from sidecar.runtime import INVALID, check
from sidecar.support import logs

T = TypeVar("T")

ABOUT = """\
Authorization sidecar for certificate-bound OAuth 2.0 access tokens (RFC 8705, RFC 7662, RFC 9068,
RFC 9449), asked by nginx auth_request, Envoy ext_authz, Traefik, Caddy and HAProxy.

Configuration: a TOML file (--config FILE, or the path in SIDECAR_CONFIG) and SIDECAR_SECTION__KEY
environment variables, which win over the file. An invalid value is named and the exit status is 2.
"""
COMMANDS = {
    "serve": ("serve checks (the default command)", """\
Serve checks on server.port, /healthz, /readyz and /metrics on server.admin_port, and Envoy's gRPC
ext_authz on server.grpc_port when set. Logs are JSON lines on stderr.

Signals: SIGTERM or SIGINT drain (readiness turns false, checks in flight get server.shutdown_grace
seconds) and stop. SIGHUP reads the file and the environment again and swaps the new configuration
in without dropping a check; a change to a key that needs a restart (ports, listeners) or an invalid
value keeps the running configuration and is logged (sidecar_config_reloads_total counts both).

Exit status: 0 after a drain, 2 for an invalid configuration or a port that cannot be bound, 1
otherwise."""),
    "check-config": ("validate the configuration and exit", """\
Read the configuration as serve would (the file and the environment), check every value and that
the certificate, key, CA and secret files load, print the warnings and "configuration ok", and exit
0; or print the first problem, naming the key, and exit 2. Nothing is served. With --online, also
contact every issuer (discovery, mutual TLS, the JWK Set, one introspection) and exit 1 naming each
key whose issuer fails."""),
    "demo": ("a self-contained demonstration", """\
Start a throwaway certificate authority, a development IdP over mutual TLS and the sidecar, show one
allowed and one denied check with the curl lines that repeat them, and keep serving until Ctrl-C.
Standard output tells that story; the JSON logs go to a file (--log). The keys and tokens live in a
temporary directory that is removed on exit. The IdP listens on SIDECAR_DEMO_IDP_PORT (default
9443), the sidecar on server.port and server.admin_port (8080, 8081); a taken port is named."""),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description=ABOUT,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Run 'sidecar COMMAND --help' for a command.")
    parser.add_argument("--version", action="version",
                        version=f"sidecar {sidecar.__version__} (Python {platform.python_version()})")
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML file (default: $SIDECAR_CONFIG)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (summary, text) in COMMANDS.items():
        command = commands.add_parser(name, help=summary, description=text,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        if name != "demo":  # after the command too; SUPPRESS keeps a --config given before it
            command.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS,
                                 help="TOML file (default: $SIDECAR_CONFIG)")
            if name == "check-config":
                command.add_argument("--online", action="store_true", help="contact every issuer (discovery, "
                                     "mutual TLS, JWK Set, one introspection); exit 1 naming each key that fails")
        else:
            command.add_argument("--log", metavar="FILE", type=Path,
                                 help=f"where the JSON logs go (default: {tempfile.gettempdir()}/sidecar-demo.log)")
    return parser


def _load(path: str | None) -> config_module.Config:
    """Load, validate, and prove the files load (runtime.check); raises naming the key."""
    config = config_module.load(path)
    check(config)
    return config


def _load_checked(path: str | None) -> config_module.Config:
    try:
        return _load(path)
    except INVALID as exc:
        print(f"sidecar: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_online(config: config_module.Config) -> None:
    """Contact every issuer; exit 1 with one line per failure (the key, the cause, the detail)."""
    from sidecar.idp.online import check_online

    findings = asyncio.run(check_online(config))
    for finding in findings:
        print(f"sidecar: online check failed: {finding}", file=sys.stderr)
    if findings:
        raise SystemExit(1)
    print(f"online: every issuer answered ({', '.join(config.every_issuer)})")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


def _serve(config: config_module.Config, loader: Callable[[], config_module.Config]) -> None:
    """Serve until stopped; a port that cannot be bound is one line and exit status 2."""
    from sidecar.app import ListenError, serve

    try:
        _run(serve(config, loader=loader))
    except ListenError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from sidecar.dev.demo import LOG_FILE, run_demo

        raise SystemExit(_run(run_demo(args.log or LOG_FILE)))
    config = _load_checked(args.config)
    if args.command == "check-config":
        for warning in config_module.warnings(config):
            print(f"sidecar: warning: {warning}", file=sys.stderr)
        print("configuration ok")
        print(f"policies: {', '.join(['default', *config.policies])}; rules: {len(config.routes)}")
        if config.issuers:
            print(f"issuers: {', '.join(config.every_issuer)}")
        if getattr(args, "online", False):
            _check_online(config)
        return
    logs.setup(config.log.level)
    for warning in config_module.warnings(config):
        logging.getLogger("sidecar").warning("configuration", extra={"warning": warning})
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server handles it: never the default (exit)
    if config.server.workers > 1:
        from sidecar.workers import run_workers, worker_config

        raise SystemExit(run_workers(config, lambda index, worker: _serve(
            worker, lambda: worker_config(_load(args.config), index))))
    _serve(config, lambda: _load(args.config))


if __name__ == "__main__":
    main()

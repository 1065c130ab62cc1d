"""Command line: ``sidecar [serve] [--config FILE]``, ``sidecar check-config [--online]``, ``sidecar demo``."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from collections.abc import Sequence

from sidecar import config as config_module
from sidecar.config import ConfigError
from sidecar.core.client_trust import ClientTrust
from sidecar.idp.tls import TlsConfigError, client_context
from sidecar.support import logs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "check-config", "demo"))
    parser.add_argument("--config", "-c", help="TOML file (default: $SIDECAR_CONFIG)")
    parser.add_argument("--online", action="store_true", help="check-config: contact every issuer (discovery, "
                        "mutual TLS, JWK Set, one introspection); exit 1 naming each key that fails")
    return parser


def _load_checked(path: str | None) -> config_module.Config:
    """Load, validate, and prove the TLS files load; exits 2 naming the key on error."""
    try:
        config = config_module.load(path)
        if not (config.idp_configured or config.issuers):
            raise ConfigError("idp.issuer", "set idp.issuer or idp.introspection_endpoint (or run 'sidecar demo')")
        for name, idp in config.every_issuer.items():
            try:
                client_context(idp)
            except TlsConfigError as exc:
                where = "idp" if name == "default" else f"issuers.{name}"
                raise TlsConfigError(str(exc).replace("idp.", f"{where}.")) from None
        if config.client_cert.ca_file:
            try:
                ClientTrust(config.client_cert.ca_file)
            except ValueError as exc:
                raise ConfigError("client_cert.ca_file", str(exc).removeprefix("client_cert.ca_file: ")) from None
        config_module.admin_secret(config.server)  # a secret file's content is checked too
        if config.fleet.enabled and importlib.util.find_spec("redis") is None:
            raise ConfigError("fleet.enabled", "needs the fleet extra: pip install 'sidecar[fleet]'")
    except (ConfigError, TlsConfigError) as exc:
        print(f"sidecar: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return config


def _check_online(config: config_module.Config) -> None:
    """Contact every issuer; exit 1 with one line per failure (the key, the cause, the detail)."""
    from sidecar.idp.online import check_online

    findings = asyncio.run(check_online(config))
    for finding in findings:
        print(f"sidecar: online check failed: {finding}", file=sys.stderr)
    if findings:
        raise SystemExit(1)
    print(f"online: every issuer answered ({', '.join(config.every_issuer)})")


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a Linux dependency
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from sidecar.dev.demo import run_demo

        logs.setup("info")
        _run(run_demo())
        return
    config = _load_checked(args.config)
    if args.command == "check-config":
        for warning in config_module.warnings(config):
            print(f"sidecar: warning: {warning}", file=sys.stderr)
        print("configuration ok")
        print(f"policies: {', '.join(['default', *config.policies])}; rules: {len(config.routes)}")
        if config.issuers:
            print(f"issuers: {', '.join(config.every_issuer)}")
        if args.online:
            _check_online(config)
        return
    logs.setup(config.log.level)
    for warning in config_module.warnings(config):
        logging.getLogger("sidecar").warning("configuration", extra={"warning": warning})
    from sidecar.app import serve

    if config.server.workers > 1:
        from sidecar.workers import run_workers

        raise SystemExit(run_workers(config, lambda worker: _run(serve(worker))))
    _run(serve(config))


if __name__ == "__main__":
    main()

"""Fixtures for the interop tests: the real IdP (oidc-provider), and deployments of nginx + the
sidecar process + an echoing upstream, started once per configuration and shared."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from sidecar.dev.pki import CertificateAuthority
from tests.interop.oidc_idp import OidcProvider
from tests.interop.stack import Stack, start_stack
from tests.support.pki_fixtures import TestPki

StartStack = Callable[..., Stack]


@pytest.fixture(scope="session")
def client_files(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """alice and bob (our CA), and mallory, whose certificate another CA issued."""
    foreign = CertificateAuthority("another CA").issue("mallory")
    return {"alice": pki.alice_files, "bob": pki.bob_files,
            "mallory": foreign.write(tmp_path_factory.mktemp("foreign"), "mallory")}


@pytest.fixture(scope="session")
def oidc(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    provider = OidcProvider(pki, tmp_path_factory.mktemp("oidc-provider"))
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def stacks(oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartStack]:
    """``stacks(template=..., **SIDECAR_overrides)``: one shared deployment per configuration."""
    started: dict[tuple[str, frozenset[tuple[str, str]]], Stack] = {}
    log_dir = tmp_path_factory.mktemp("stacks")

    def get(template: str = "api.conf.template", **overrides: str) -> Stack:
        key = (template, frozenset(overrides.items()))
        if key not in started:
            started[key] = start_stack(oidc, log_dir, template=template, overrides=overrides,
                                       client_files=client_files)
        return started[key]

    yield get
    for stack in started.values():
        stack.stop()


def own_idp(pki: TestPki, state_dir: Path) -> OidcProvider:
    """An IdP of one test's own, for tests that stop it."""
    provider = OidcProvider(pki, state_dir)
    provider.start()
    return provider


def env(**values: str | int) -> Mapping[str, str]:
    return {k: str(v) for k, v in values.items()}

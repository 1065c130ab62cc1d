"""The rotation watcher's pieces: symlink-resolving snapshots, expiry, and its configuration key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sidecar import config as config_module
from sidecar.config import ConfigError, IdpConfig
from sidecar.dev.pki import CertificateAuthority
from sidecar.idp.rotation import CertificateWatcher, certificate_expiry, files_of
from sidecar.idp.tls import IdpSession
from sidecar.support.metrics import Metrics
from tests.support.kubelet import SecretVolume


def published(tmp_path: Path, content: bytes) -> tuple[SecretVolume, IdpConfig]:
    volume = SecretVolume(tmp_path / "secret")
    volume.publish({"tls.crt": content, "tls.key": b"key", "ca.crt": b"ca"})
    idp = IdpConfig(cert_file=str(volume.path("tls.crt")), key_file=str(volume.path("tls.key")),
                    ca_file=str(volume.path("ca.crt")))
    return volume, idp


def test_a_snapshot_follows_the_data_symlink_to_the_timestamped_directory(tmp_path: Path) -> None:
    volume, idp = published(tmp_path, b"one")
    first = files_of(idp).read()
    assert Path(first.paths["cert_file"]).parent.name.startswith("..2")
    assert Path(first.paths["cert_file"]).parent.name != "..data"
    volume.publish({"tls.crt": b"two", "tls.key": b"key", "ca.crt": b"ca"})
    second = files_of(idp).read()
    assert second.digest != first.digest and second.paths["cert_file"] != first.paths["cert_file"]
    assert not Path(first.paths["cert_file"]).exists()  # the kubelet removed the old generation


def test_the_same_content_republished_has_the_same_digest(tmp_path: Path) -> None:
    volume, idp = published(tmp_path, b"one")
    first = files_of(idp).read()
    volume.publish({"tls.crt": b"one", "tls.key": b"key", "ca.crt": b"ca"})
    watch = files_of(idp)
    assert watch.read().digest == first.digest
    watch.seen = first.digest
    assert watch.poll() is None  # unchanged content: nothing to reload


def test_certificate_expiry_is_the_leafs_not_after(tmp_path: Path) -> None:
    issued = CertificateAuthority().issue("sidecar", days=2)
    assert certificate_expiry(issued.cert_pem) == issued.cert.not_valid_after_utc
    assert certificate_expiry(None) is None


def test_reload_interval_comes_from_the_environment_and_rejects_negative_values(tmp_path: Path) -> None:
    issued = CertificateAuthority().issue("sidecar")
    cert, key = issued.write(tmp_path, "sidecar")
    env = {"SIDECAR_IDP__ISSUER": "https://idp.example", "SIDECAR_IDP__CLIENT_ID": "sidecar",
           "SIDECAR_IDP__CERT_FILE": str(cert), "SIDECAR_IDP__KEY_FILE": str(key)}
    assert config_module.load(None, env).idp.reload_interval == 10.0
    assert config_module.load(None, {**env, "SIDECAR_IDP__RELOAD_INTERVAL": "0"}).idp.reload_interval == 0
    with pytest.raises(ConfigError, match=r"^idp\.reload_interval"):
        config_module.load(None, {**env, "SIDECAR_IDP__RELOAD_INTERVAL": "-1"})


def test_the_watcher_calls_the_certificate_expired_from_its_not_after_on(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    issued = ca.issue("sidecar", days=1)
    cert, key = issued.write(tmp_path, "sidecar")
    (tmp_path / "ca.crt").write_bytes(ca.root.cert_pem)
    idp = IdpConfig(cert_file=str(cert), key_file=str(key), ca_file=str(tmp_path / "ca.crt"))
    watcher = CertificateWatcher(idp, IdpSession(idp), Metrics())
    not_after = issued.cert.not_valid_after_utc
    assert watcher.not_after == not_after
    assert not watcher.expired() and not watcher.expired(not_after - dt.timedelta(seconds=1))
    assert watcher.expired(not_after)


def test_without_certificate_files_nothing_is_watched_or_expires() -> None:
    idp = IdpConfig()
    watcher = CertificateWatcher(idp, IdpSession(idp), Metrics())
    assert watcher.not_after is None and not watcher.expired() and watcher.poll() is False

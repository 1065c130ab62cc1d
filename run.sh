#!/usr/bin/env bash
# Set up and run the sidecar. With no IdP configured (no SIDECAR_CONFIG, no SIDECAR_IDP__*
# variables, no arguments) it runs the self-contained demo: throwaway PKI, development IdP over
# mutual TLS, the sidecar, and an allow and a deny printed with curl lines to repeat them.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/sidecar ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -e .
  touch .venv/.installed
fi
if [ $# -gt 0 ] || [ -n "${SIDECAR_CONFIG:-}" ] || env | grep -q '^SIDECAR_IDP__'; then
  exec .venv/bin/sidecar "$@"
fi
exec .venv/bin/sidecar demo

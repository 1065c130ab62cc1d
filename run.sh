#!/usr/bin/env bash
# Set up and run the sidecar. With no IdP configured (no SIDECAR_CONFIG, no SIDECAR_IDP__*
# variables, no arguments) it runs the self-contained demo: throwaway PKI, development IdP over
# mutual TLS, the sidecar, and an allow and a deny printed with curl lines to repeat them.
set -euo pipefail
cd "$(dirname "$0")"
# The packages of uv.lock (uv itself from the hashed tools/uv.txt); --inexact keeps what ./test.sh
# added to the same .venv.
source tools/uv.sh
uv_sync --inexact --extra fleet
if [ $# -gt 0 ] || [ -n "${SIDECAR_CONFIG:-}" ] || env | grep -q '^SIDECAR_IDP__'; then
  exec .venv/bin/sidecar "$@"
fi
exec .venv/bin/sidecar demo

# Sourced by test.sh and run.sh: uv from the hashed tools/uv.txt in .uv/, and `uv_sync`, which makes
# .venv exactly what uv.lock says (plus the project, editable). No Python is ever downloaded: uv uses
# this machine's python3.
UV="$PWD/.uv/bin/uv"
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
if [ ! -x "$UV" ] || [ tools/uv.txt -nt .uv/.installed ]; then
  rm -rf .uv && python3 -m venv .uv
  .uv/bin/pip install --quiet --disable-pip-version-check --require-hashes -r tools/uv.txt
  touch .uv/.installed
fi

# A .venv made by another tool (python -m venv, an older ./test.sh) carries pip and setuptools that
# uv leaves alone: start afresh so that the environment is exactly the lock.
if [ -d .venv ] && ! grep -q '^uv = ' .venv/pyvenv.cfg 2>/dev/null; then rm -rf .venv; fi

# xds-protos (the Envoy protos of the gRPC front) also ships old copies of the OpenTelemetry and
# Google API protos that opentelemetry-proto and googleapis-common-protos (the OTLP exporter's)
# ship: in one sync the wheel unpacked last wins, so either may (an old OpenTelemetry copy breaks
# the exporter). A second sync reinstalls those two alone, from the lock: their files win, every
# time (tests/test_lock.py checks the files on disk).
uv_sync() {
  "$UV" sync --locked --quiet --python python3 "$@"
  "$UV" sync --locked --quiet --python python3 \
    --reinstall-package opentelemetry-proto --reinstall-package googleapis-common-protos "$@"
}

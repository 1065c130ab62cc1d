# syntax=docker/dockerfile:1
# The sidecar image: the first stage installs the package and exactly the runtime and fleet
# (a shared cache on Redis) dependencies of uv.lock into /opt/sidecar (a venv), with uv from the
# hashed tools/uv.txt; the final stage holds that venv and nothing else of the build. It runs as
# a numeric non-root user and writes nothing outside /tmp, so it runs with readOnlyRootFilesystem
# and an emptyDir on /tmp (deploy/kubernetes).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_NATIVE_TLS=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/sidecar
WORKDIR /src
COPY tools/uv.txt ./tools/
RUN python -m venv /opt/uv && /opt/uv/bin/pip install --require-hashes -r tools/uv.txt
COPY pyproject.toml uv.lock README.md ./
COPY sidecar ./sidecar
# The second sync makes opentelemetry-proto's and googleapis-common-protos's files win over the old
# copies xds-protos ships (tools/uv.sh says why); the import fails the build if they did not.
RUN /opt/uv/bin/uv sync --locked --no-editable --extra fleet --python python3 \
    && /opt/uv/bin/uv sync --locked --no-editable --extra fleet --python python3 \
       --reinstall-package opentelemetry-proto --reinstall-package googleapis-common-protos \
    && /opt/sidecar/bin/python -c "from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope" \
    && /opt/sidecar/bin/sidecar --help

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sidecar" \
      org.opencontainers.image.description="Authorization sidecar for certificate-bound OAuth 2.0 access tokens (RFC 8705) behind nginx auth_request and Envoy ext_authz" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
COPY --from=build /opt/sidecar /opt/sidecar
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
# 8080: checks (nginx auth_request / Envoy ext_authz); 8081: /healthz, /readyz, /metrics.
EXPOSE 8080 8081
USER 65532:65532
ENTRYPOINT ["sidecar"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# distinct-forwarder: one image for every role.
#
#   docker build -t distinct-forwarder .
#   docker run --rm -e REDIS_URL=redis://... -e DISTINCT_API_KEY=... distinct-forwarder worker
#   docker run --rm -e REDIS_URL=redis://... -e FORWARDER_RELAY_KEYS=... -p 8080:8080 \
#       distinct-forwarder relay --bind 0.0.0.0:8080
#   docker run --rm -e REDIS_URL=redis://... distinct-forwarder status
#   docker build --target flower -t distinct-forwarder-flower .     # + Flower
#
# Dependencies come from requirements/*.lock with every file's hash checked;
# the final stage holds a virtualenv and nothing else of the build: no
# compiler, no source tree, no pip cache. docs/deployment.md has the rest.

# The Python the locks are tested against (tests/test_lock.py); pin it by
# digest in your own build for byte-for-byte rebuilds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the wheel, and the venv it goes into --------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements/ requirements/
# The venv lives at the path it will have in the final stage (venvs do not move).
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes -r requirements/build.lock \
    && python -m venv /opt/distinct-forwarder \
    && /opt/distinct-forwarder/bin/pip install --no-cache-dir --require-hashes \
        -r requirements/runtime.lock
COPY pyproject.toml README.md LICENSE ./
COPY forwarder/ forwarder/
COPY workers/ workers/
# --no-deps: everything it needs is already in the venv, from the lock.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels . \
    && /opt/distinct-forwarder/bin/pip install --no-cache-dir --no-deps \
        /wheels/distinct_forwarder-*.whl \
    && /opt/distinct-forwarder/bin/python -m compileall -q /opt/distinct-forwarder/lib

# --- runtime ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.2.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="distinct-forwarder" \
      org.opencontainers.image.description="Capture analytics events into Redis; workers deliver them to Distinct, and never lose one." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# A fixed uid, so Kubernetes' runAsNonRoot can check it; the spool's directory
# is the only place it writes (the relay's local spool while Redis is away).
RUN groupadd --system --gid 10001 forwarder \
    && useradd --system --uid 10001 --gid forwarder --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin forwarder \
    && install -d -o forwarder -g forwarder -m 0750 /var/lib/distinct-forwarder
COPY --from=build /opt/distinct-forwarder /opt/distinct-forwarder
ENV PATH=/opt/distinct-forwarder/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FORWARDER_LOG_FORMAT=json \
    FORWARDER_SPOOL_PATH=/var/lib/distinct-forwarder/spool.db
WORKDIR /var/lib/distinct-forwarder
USER 10001:10001
# The worker's supervisor passes SIGTERM to its Celery child once: running
# deliveries finish, the rest goes back to the queue, the process exits within
# FORWARDER_SHUTDOWN_TIMEOUT (15 s). Give it longer (docker stop -t 30).
STOPSIGNAL SIGTERM
# Reads PID 1's command line: a worker must beat in Redis and make progress, a
# relay must answer /healthz; one-shot commands (status, dlq ...) have nothing to check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["distinct-forwarder", "health"]
ENTRYPOINT ["distinct-forwarder"]
CMD ["--help"]

# --- flower: the runtime plus Flower (docker compose --profile monitoring) ------------
FROM runtime AS flower
USER 0
COPY requirements/monitoring.lock /tmp/monitoring.lock
# Adds Flower and its dependencies; the runtime's pins are the same (tests/test_lock.py).
RUN /opt/distinct-forwarder/bin/pip install --no-cache-dir --require-hashes \
        -r /tmp/monitoring.lock \
    && rm /tmp/monitoring.lock
USER 10001:10001
# Flower answers its own /healthcheck; it holds no events.
HEALTHCHECK NONE
ENTRYPOINT ["celery", "-A", "workers", "flower"]
CMD ["--port=5555", "--address=0.0.0.0"]

# --- the default target (docker build . without --target) is the runtime ----------------
FROM runtime AS release

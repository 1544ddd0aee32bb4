# orders-service container image.
#
#   docker build -t orders-service .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -e DATABASE_URL=postgresql://... -e REDIS_URL=redis://... orders-service
#
# Four stages; the first three on the same Python base so a virtualenv built in one runs in another:
#   builder  has a C compiler; builds the project wheel (Cython extension native._speedups)
#            and takes a wheel for every runtime dependency into /wheels, each exactly as
#            pinned in requirements/lock.txt and checked against its hashes (--require-hashes).
#   venv     has NO compiler; installs /wheels offline (--no-index) into /opt/venv, which
#            proves the wheel set is complete and nothing is compiled at install time.
#   rootfs   has NO compiler; assembles the runtime's root filesystem from this same base: its
#            Python, /opt/venv, tini, the CA bundle and the shared libraries they load. Copying
#            the installed venv rather than the wheels keeps the ~40 MB of wheel files out of
#            the final image (a `RUN --mount=from=builder` would do the same but needs BuildKit;
#            this file also builds with the classic builder).
#   runtime  FROM scratch: that root filesystem and nothing else (no shell, apt or coreutils).
#
# PYTHON_BASE must be a Debian-based image with python3 (>= 3.11) and its venv module;
# the default is the official slim image. deploy/local-image/build-base.sh prepares one
# from a debootstrapped Debian where no registry is reachable; Debian's python3 keeps its
# C headers in python3.11-dev, so such a build passes
#   --build-arg BUILD_DEPS="gcc libc6-dev python3.11-dev"
ARG PYTHON_BASE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_BASE} AS builder

ARG BUILD_DEPS="gcc libc6-dev"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The base image's tag fixes the Debian release; packages follow its security updates, so
# they are deliberately not pinned to exact versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ${BUILD_DEPS} \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# A venv of its own: Debian's system python has no pip (and refuses installs, PEP 668).
RUN python3 -m venv /opt/build

WORKDIR /src

# The lock files first, so editing the code reuses these layers. The build backend (pip, setuptools,
# wheel, Cython: requirements/build-lock.txt) is installed from its lock, and the project wheel
# is built with it (--no-build-isolation), not with whatever an isolated build would download.
# Dependencies come as the lock's own wheels only (--only-binary): nothing is built from source.
# EXTRAS=tracing takes requirements/lock-tracing.txt instead (runtime + OpenTelemetry), which
# makes OTEL_EXPORTER_OTLP_ENDPOINT usable in the container (the default image leaves it out).
ARG EXTRAS=""
COPY requirements/build-lock.txt requirements/lock.txt requirements/lock-tracing.txt ./requirements/
RUN /opt/build/bin/pip install --no-cache-dir --require-hashes -r requirements/build-lock.txt \
    && lock="requirements/lock${EXTRAS:+-${EXTRAS}}.txt" && test -f "$lock" \
    && /opt/build/bin/pip wheel --no-cache-dir --require-hashes --only-binary=:all: -w /wheels -r "$lock"

# The project wheel. tests/integration/test_wheel_install.py runs this same command.
COPY pyproject.toml setup.py README.md ./
COPY migrations ./migrations
COPY native ./native
COPY service ./service
RUN /opt/build/bin/pip wheel --no-cache-dir --no-build-isolation --no-deps -w /wheels . \
    && /opt/build/bin/python -c "import glob, sys, zipfile; \
whl = glob.glob('/wheels/orders_service-*.whl'); \
names = zipfile.ZipFile(whl[0]).namelist(); \
sys.exit(0 if any(n.startswith('native/_speedups') and n.endswith('.so') for n in names) \
         else 'native._speedups was not compiled into ' + whl[0])"

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_BASE} AS venv

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# binutils for `strip` only (this stage's packages never reach the final image).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /wheels /wheels
# Every wheel in /wheels (the project, its dependencies and py-spy, which the project
# depends on for the profiling endpoints), offline: a missing wheel fails the build.
# What the image does not run goes: pip and setuptools; the extension modules' and py-spy's
# debug sections and static symbol tables (uvloop alone ships 12 MB of debug data; the dynamic
# symbols that Python imports by stay, and the profiling endpoints never use py-spy --native);
# Cython sources, C headers and type stubs of the dependencies (native/'s own stay: its package
# data). Byte code stays: the root filesystem is read-only in Kubernetes, so every process would
# otherwise compile what it imports at every start.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && /opt/venv/bin/pip uninstall -y pip setuptools \
    && find /opt/venv -name '*.so*' -type f -exec strip --strip-unneeded {} + \
    && strip --strip-unneeded /opt/venv/bin/py-spy \
    && find /opt/venv/lib/python3*/site-packages -type f \
         \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.pyi' -o -name '*.c' -o -name '*.h' \) \
         -not -path '*/site-packages/native/*' -delete \
    && /opt/venv/bin/orders-service --help >/dev/null \
    && /opt/venv/bin/py-spy --version \
    && /opt/venv/bin/python -c "import native, sys; sys.exit(0 if native.ACTIVE == 'cython' else 'native: ' + native.ACTIVE)" \
    && /opt/venv/bin/python -c "import granian, grpc, psqlpy, uvloop, redis, hiredis, jwt, cryptography.hazmat.primitives.asymmetric.ed25519, msgspec, uuid_utils, google.protobuf, prometheus_client"

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_BASE} AS rootfs

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The runtime's whole root filesystem, assembled from this base (deploy/image/assemble-rootfs.sh):
# its Python and standard library, /opt/venv, tini (static: it is PID 1, forwarding SIGTERM to the
# supervisor and reaping the orphans of a crashed role's granian workers, which a Python PID 1
# never waits for), the CA bundle, and only the shared libraries those load; users root and
# 10001 (orders); /tmp, /home/orders and /keys (where compose's one-shot `keys` service writes the
# local dev JWKS: a fresh named volume mounted there takes this directory's owner, 10001).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY --from=venv /opt/venv /opt/venv
COPY deploy/image/assemble-rootfs.sh /usr/local/bin/assemble-rootfs
RUN assemble-rootfs /rootfs

# ---------------------------------------------------------------------------------------
# No shell, package manager or coreutils: the service execs only itself and py-spy, and the
# probes are exec form. What Debian's userland was (127 MB of the 221) is not here.
FROM scratch AS runtime

COPY --from=rootfs /rootfs /

# BIND: REST and gRPC must listen beyond the container's loopback.
# ADMIN_BIND stays 127.0.0.1: the profiling port is unauthenticated, so the image never
# exposes it by itself (a `docker run -p 6060:6060` or a pod IP would otherwise publish it).
# compose.yaml opts in with ADMIN_BIND=0.0.0.0 because it publishes 6060 on the host's
# 127.0.0.1 only; in Kubernetes use `kubectl port-forward`, which reaches the pod's loopback.
# AUTH_MODE=jwt: the image refuses to start until the deployment names its token issuer
# (AUTH_ISSUER, AUTH_AUDIENCE, AUTH_JWKS_URL or AUTH_JWKS_FILE); no key or secret is defaulted.
# MIGRATE_ON_START=false: migrations are a deployment step (`orders-service migrate`: the
# compose `migrate` service, the Kubernetes Job), not something every replica races to do.
# REQUIRE_CURSOR_SECRET=true: the image never makes up a secret; `serve` stops without CURSOR_SECRET
# (a switch, not sensitive data: hence the DL3064 exception).
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:/usr/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BIND=0.0.0.0 \
    ADMIN_BIND=127.0.0.1 \
    PORT=8080 \
    GRPC_PORT=9090 \
    PPROF_PORT=6060 \
    MIGRATE_ON_START=false \
    REQUIRE_CURSOR_SECRET=true \
    DATA_DIR=/tmp/orders-data \
    AUTH_MODE=jwt

WORKDIR /home/orders
USER 10001:10001

# REST, gRPC, admin/profiling (the latter bound to ADMIN_BIND).
EXPOSE 8080 9090 6060

# Liveness of the REST role. A container started with `--roles grpc` or `--roles worker`
# has no REST port: run it with --no-healthcheck / `healthcheck: {disable: true}`
# (Kubernetes ignores this instruction and uses the manifests' probes).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/health', timeout=2)"]

ENTRYPOINT ["/usr/bin/tini", "--", "/opt/venv/bin/orders-service"]
CMD ["serve"]

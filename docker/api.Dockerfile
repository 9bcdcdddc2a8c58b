# syntax=docker/dockerfile:1
# hetserve API image, also used by the one-shot `migrate` service and for `hetserve` CLI
# calls inside the deployment. The project's base dependencies only: FastAPI, SQLAlchemy,
# Celery (client side), onnxruntime. No torch: the serving path never imports it, and
# the image stays small and starts fast.
#
# Two stages: `build` resolves the wheels into a virtualenv; the runtime stage copies
# only that venv (no pip cache, no build backend, no sources).
#
# Build (from the repository root):  docker build -f docker/api.Dockerfile -t hetserve-api .

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -r requirements.txt
COPY app ./app
COPY core ./core
COPY models ./models
COPY worker ./worker
COPY hetserve ./hetserve
RUN pip install --no-deps . \
 && python -c "import app.main, app.serving.onnx_model, app.cli, hetserve" \
 && ! python -c "import torch" 2>/dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 hetserve \
 && useradd --system --uid 10001 --gid hetserve --home-dir /data --no-create-home --shell /usr/sbin/nologin hetserve \
 && mkdir -p /data \
 && chown hetserve:hetserve /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HETSERVE_DATA_DIR=/data \
    HETSERVE_HOST=0.0.0.0 \
    HETSERVE_PORT=8000
USER 10001:10001
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['HETSERVE_PORT']}/healthz\", timeout=4)"]
CMD ["sh", "-c", "exec uvicorn app.main:app --host \"$HETSERVE_HOST\" --port \"$HETSERVE_PORT\""]

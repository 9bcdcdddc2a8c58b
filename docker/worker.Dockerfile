# syntax=docker/dockerfile:1
# hetserve training worker: the project with its `train` extra (torch==2.13.0, onnx,
# onnxscript, scikit-learn). From PyPI, torch 2.13.0 is the CUDA build and brings the CUDA
# runtime libraries as wheels, so the base is a plain Python image: the NVIDIA container
# toolkit injects the driver at run time. For a CPU-only image (docker-compose.cpu.yml):
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# Two stages: the heavy dependency layer (torch) is built once and reused across code
# changes; the runtime stage carries the venv only.
#
# Build (from the repository root):  docker build -f docker/worker.Dockerfile -t hetserve-worker .

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['train']))" > requirements.txt \
 && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r requirements.txt
COPY app ./app
COPY core ./core
COPY models ./models
COPY worker ./worker
COPY hetserve ./hetserve
RUN pip install --no-deps . \
 && python -c "import torch, worker.celery_app; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

FROM ${PYTHON_IMAGE}
# A C compiler: the HET head's fused CPU kernel (models/het_kernel.c) is compiled at first
# use for the CPU the worker runs on (-march=native, cached under ~/.cache = /data/.cache),
# so it cannot be built here for an unknown machine; without gcc the head falls back to its
# slower torch path.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 hetserve \
 && useradd --system --uid 10001 --gid hetserve --home-dir /data --no-create-home --shell /usr/sbin/nologin hetserve \
 && mkdir -p /data /var/lib/hetserve/gpu-slots \
 && chown hetserve:hetserve /data /var/lib/hetserve/gpu-slots
COPY --from=build /opt/venv /opt/venv
COPY docker/worker-entrypoint.py /opt/hetserve/worker-entrypoint.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HETSERVE_DATA_DIR=/data \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# the kernel compiles with this image's gcc (into a throwaway cache: the CPU here is not
# the one the worker will run on)
RUN HETSERVE_KERNEL_CACHE=/tmp/het-kernel HETSERVE_HET_KERNEL=kernel \
    python -c "from models import het_kernel; het_kernel.load()" \
 && rm -rf /tmp/het-kernel
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["python", "/opt/hetserve/worker-entrypoint.py"]
CMD ["celery", "-A", "worker.celery_app:celery_app", "worker", "--pool=solo", "--concurrency=1", "-Q", "train", "--loglevel=INFO"]

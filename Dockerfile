# syntax=docker/dockerfile:1
# One image for the synthrec operator (`synthrec operator`) and its workers
# (`python -m synthrec.workers STAGE --task TASK.json`):
#   docker build -t synthrec:0.1.0 .
#
# Base: python:3.11-slim, not nvidia/cuda. The torch 2.14.1 wheels on PyPI bundle the CUDA runtime,
# cuDNN, cuBLAS and NCCL as nvidia-* wheels, so the image carries no CUDA toolkit of its own: the GPU
# node supplies only the driver (libcuda, mounted by the NVIDIA container toolkit / GPU Operator). A
# cudnn-runtime base would add a second copy of the same libraries (several GB) for nothing, and the
# operator, which never touches a GPU, runs from the same image.
ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------- build
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# constraints.txt pins every package to the versions the test suite passed with (make constraints).
COPY constraints.txt ./
# torch first, in its own layer: by far the largest dependency and the one that changes least often.
RUN pip install --no-cache-dir -c constraints.txt torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY synthrec/ synthrec/
COPY operator/ operator/
COPY workers/ workers/
# A regular (non-editable) install: the final image needs the venv only, not /src.
RUN pip install --no-cache-dir -c constraints.txt "./[operator,workers]"

# ---------------------------------------------------------------------------------------------- final
FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="synthrec" \
      org.opencontainers.image.description="synthrec operator and workers: synthetic data from generative models for image recognition" \
      org.opencontainers.image.licenses="Apache-2.0"
# A numeric non-root user, so that Kubernetes' runAsNonRoot can verify it. /cache is only a fallback
# for `docker run`: in pods /tmp, /cache and /dev/shm are emptyDirs and the root filesystem is read-only.
RUN groupadd --gid 10001 synthrec \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin synthrec \
    && mkdir -p /cache \
    && chown 10001:10001 /cache
COPY --from=build /opt/venv /opt/venv
# HOME and the caches as the operator sets them for worker pods (see /work/contracts.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    SYNTHREC_CACHE=/cache/synthrec \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /tmp
# No ENTRYPOINT: the default command runs the operator, and any other command replaces it whole, e.g.
#   docker run synthrec:0.1.0 python -m synthrec.workers generate --task task.json
# (the operator sets `command` on worker containers). Both handle SIGTERM themselves (Kopf; the
# workers' runtime), so no init process is needed.
CMD ["synthrec", "operator"]

# syntax=docker/dockerfile:1
# One image for the synthrec operator (`synthrec operator`) and its workers
# (`python -m synthrec.workers STAGE --task TASK.json`). `make image` builds it with the tag and labels
# below filled in from pyproject.toml and git; by hand:
#   docker build --build-arg CUDA_VARIANT=cu128 --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" -t synthrec:0.1.0-cu128 .
#
# CUDA_VARIANT picks the torch build; every variant has the same torch 2.14.1 and torchvision 0.29.1.
#   variant          torch wheels                         NVIDIA driver (Linux)     tags
#   cu130 (default)  CUDA 13.0, from PyPI                 >= 580.65.06              VERSION, VERSION-cu130
#   cu128            CUDA 12.8, from the PyTorch index    >= 525.60.13 (570+ best)  VERSION-cu128
#   cu126            CUDA 12.6, from the PyTorch index    >= 525.60.13              VERSION-cu126
#   cpu              no CUDA, from the PyTorch index      none                      VERSION-cpu
# CUDA 12 runs on older drivers through CUDA's minor-version compatibility; docs/cluster.md ("Image
# variants") says which GPUs each variant covers. There is no ROCm variant: the image is for NVIDIA GPUs.
#
# Base: python:3.11-slim, not nvidia/cuda. The torch wheels bundle the CUDA runtime, cuDNN, cuBLAS and
# NCCL as nvidia-* wheels, so the image carries no CUDA toolkit of its own: the GPU node supplies only the
# driver (libcuda, mounted by the NVIDIA container toolkit / GPU Operator). A cudnn-runtime base would add
# a second copy of the same libraries (several GB) for nothing, and the operator, which never touches a
# GPU, runs from the same image.
ARG PYTHON_VERSION=3.11
ARG CUDA_VARIANT=cu130

# ---------------------------------------------------------------------------------------------- build
# The build stage is never pushed, so it carries no labels.
# hadolint ignore=DL3049
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG CUDA_VARIANT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# constraints.txt pins every package to the versions the test suite passed with (make constraints).
COPY constraints.txt ./
# torch first, in its own layer: by far the largest dependency and the one that changes least often.
# PyPI's torch 2.14.1 is the CUDA 13.0 build. The other variants are local versions (2.14.1+cu128) that
# only the PyTorch index has, so naming them exactly keeps pip from taking PyPI's build instead. The CUDA
# packages pinned in constraints.txt (cuda-*, nvidia-*) are the CUDA 13 build's; another variant installs
# the ones its torch wheel pins, so its constraints (constraints.image.txt) leave them out.
RUN case "${CUDA_VARIANT}" in \
      cu130) local_version="" && torch_index="https://pypi.org/simple" ;; \
      cu126|cu128|cpu) local_version="+${CUDA_VARIANT}" \
        && torch_index="https://download.pytorch.org/whl/${CUDA_VARIANT}" ;; \
      *) echo "CUDA_VARIANT=${CUDA_VARIANT} is not a variant of this image: use cu130 (default, NVIDIA" \
              "driver >= 580), cu128 or cu126 (driver >= 525.60.13), or cpu" >&2 \
         && exit 2 ;; \
    esac \
    && if [ -z "${local_version}" ]; then cp constraints.txt constraints.image.txt; \
       else grep -v -E '^(cuda|nvidia)-' constraints.txt > constraints.image.txt; fi \
    && pip install --no-cache-dir -c constraints.image.txt --extra-index-url "${torch_index}" \
         "torch==2.14.1${local_version}" "torchvision==0.29.1${local_version}"
COPY pyproject.toml README.md ./
COPY synthrec/ synthrec/
COPY operator/ operator/
COPY workers/ workers/
# A regular (non-editable) install: the final image needs the venv only, not /src.
# tracking: MLflow and W&B clients, used when a worker's environment configures them.
RUN pip install --no-cache-dir -c constraints.image.txt "./[operator,workers,tracking]"

# ---------------------------------------------------------------------------------------------- final
FROM python:${PYTHON_VERSION}-slim-bookworm
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
# OCI labels (.hadolint.yaml requires each of them and no others). The build arguments come last so that a
# new commit rebuilds no layer: VERSION is pyproject.toml's, REVISION the git commit (make image sets both).
ARG CUDA_VARIANT
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="synthrec" \
      org.opencontainers.image.description="synthrec operator and workers: synthetic data from generative models for image recognition" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="synthrec" \
      org.opencontainers.image.url="https://github.com/synthrec/synthrec" \
      org.opencontainers.image.source="https://github.com/synthrec/synthrec" \
      org.opencontainers.image.documentation="https://github.com/synthrec/synthrec/blob/main/docs/cluster.md" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim-bookworm" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      io.synthrec.image.cuda-variant="${CUDA_VARIANT}"
# No ENTRYPOINT: the default command runs the operator, and any other command replaces it whole, e.g.
#   docker run synthrec:0.1.0 python -m synthrec.workers generate --task task.json
# (the operator sets `command` on worker containers). Both handle SIGTERM themselves (Kopf; the
# workers' runtime), so no init process is needed.
CMD ["synthrec", "operator"]

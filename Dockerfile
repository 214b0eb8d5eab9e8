# Image-classifier workbench. CPU by default:
#   docker build -t classifier .
#   docker run --init -p 8501:8501 -v classifier-workspace:/workspace classifier
# (tini is the entry point already; --init is harmless next to it.) A shared server with limits: compose.server.yaml.
#
# Pin the base by digest for builds you can repeat and audit (a tag moves when it is rebuilt):
#   docker buildx imagetools inspect python:3.11-slim          # prints "Digest: sha256:..."
#   docker build --build-arg BASE_IMAGE=python:3.11-slim@sha256:<that digest> -t classifier .
# CUDA variant: build on a CUDA runtime base that has Python 3.10+, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 --build-arg TORCH_INDEX=cu126 -t classifier:cuda .
#   docker run --gpus all -p 8501:8501 -v classifier-workspace:/workspace classifier:cuda
# Any Debian or Ubuntu base works (python3 and python3-venv come from its packages when it has no Python), e.g. one
# made with debootstrap and buildah: bench/docker_check.py builds and runs the image that way.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# cpu: small CPU-only PyTorch wheels from the PyTorch index; cu126 etc.: CUDA wheels from it; pypi: the ordinary
# package index (on Linux x86_64 that is the CUDA build, several GB; use it where the PyTorch index is unreachable)
ARG TORCH_INDEX=cpu
# what to install first from that index (pin matching versions, e.g. "torch==2.13.0 torchvision==0.28.0")
ARG TORCH_SPEC="torch torchvision"
# a folder of wheels pip looks in first, mounted for the build only (buildah bud -v /opt/wheels:/wheels:ro)
ARG WHEELS=""
# the CA bundle of a TLS-inspecting proxy between the build and the package index, mounted for the build only
ARG PIP_CA=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLASSIFIER_WORKSPACE=/workspace

# tini: PID 1 that forwards signals and reaps the training processes the app starts in their own sessions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl tini ca-certificates \
    && if ! command -v python3 >/dev/null; then apt-get install -y --no-install-recommends python3 python3-venv; fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# Dependencies in their own layer: code changes do not reinstall them.
COPY requirements.txt .
# torch/torchvision first (versions bounded again by requirements.txt)
# hadolint ignore=DL3013
RUN opts="${WHEELS:+--find-links $WHEELS} ${PIP_CA:+--cert $PIP_CA}"; \
    if [ "$TORCH_INDEX" = pypi ]; then pip install $opts $TORCH_SPEC; \
    else pip install $opts --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" $TORCH_SPEC; fi \
    && pip install $opts -r requirements.txt

# The code belongs to root and nobody else may write it: the server (user app) can change only /workspace.
COPY --chown=root:root . .
RUN chmod -R go-w /app \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /workspace && chown app:app /workspace
USER 1000
VOLUME ["/workspace"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "http://localhost:8501/_stcore/health"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]

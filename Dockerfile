# Image-classifier workbench. CPU by default:
#   docker build -t classifier .
#   docker run -p 8501:8501 -v classifier-workspace:/workspace classifier
# CUDA variant: build on a CUDA runtime base that has Python 3.10+, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 --build-arg TORCH_INDEX=cu126 -t classifier:cuda .
#   docker run --gpus all -p 8501:8501 -v classifier-workspace:/workspace classifier:cuda
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# cpu: small CPU-only PyTorch wheels; cu126 etc.: CUDA wheels from the PyTorch index
ARG TORCH_INDEX=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLASSIFIER_WORKSPACE=/workspace

# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv curl \
        && rm -rf /var/lib/apt/lists/*; \
    else \
        apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# Dependencies in their own layer: code changes do not reinstall them.
COPY requirements.txt .
# torch/torchvision first from the wheel index for TORCH_INDEX (versions bounded again by requirements.txt)
# hadolint ignore=DL3013
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" torch torchvision \
    && pip install -r requirements.txt

COPY . .
RUN useradd --create-home --uid 1000 app \
    && mkdir -p /workspace && chown -R app:app /workspace /app
USER 1000
VOLUME ["/workspace"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "http://localhost:8501/_stcore/health"]
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]

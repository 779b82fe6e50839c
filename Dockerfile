# gradiag: gradient-diagnostics HTTP service.
#
# Default build (python:3.11-slim, no CUDA libraries in the base):
#   docker build -t gradiag:latest .
#
# BASE_IMAGE: any image that already provides Python >= 3.11 as `python` and `pip` on PATH,
#   plus `useradd`. A CUDA base such as nvidia/cuda:12.4.1-runtime-ubuntu22.04 does NOT ship
#   Python 3.11 (Ubuntu 22.04 has 3.10), so it cannot be used as-is: build your own CUDA image
#   with Python 3.11 installed first and pass that as BASE_IMAGE.
#
# TORCH_INDEX_URL: where the pinned torch==2.13.0 build comes from. The default, PyTorch's
#   CPU wheel index, keeps the image slim (PyPI's Linux wheel is the multi-GB CUDA build).
#   For a CUDA image pass e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
#   together with a CUDA BASE_IMAGE that provides Python 3.11.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV GRADIAG_HOST=0.0.0.0 \
    GRADIAG_PORT=8000 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# gcc compiles the statistics kernel (service/diagnostics/rows.c) at start-up, for the CPU
# it runs on; without it the slower eager kernels answer (/readyz says which).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, from the same pinned list as development, so this layer stays cached
# until requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r requirements.txt

# The service itself; its dependencies are already installed above.
COPY pyproject.toml README.md ./
COPY service/ ./service/
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 10001 gradiag

USER 10001

EXPOSE 8000

# No curl in the slim image: probe /healthz with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["gradiag", "serve"]

# gradiag: gradient-diagnostics HTTP service.
#
# Default build (python:3.11-slim, no CUDA libraries in the base):
#   docker build -t gradiag:latest .
#
# Two stages: `build` compiles the statistics kernel (a C extension) into a wheel with gcc;
# the runtime image installs that wheel and has no compiler.
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

FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ ./service/
# The kernel needs no torch to build: only the C compiler and Python's headers.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -c "import sys, zipfile, glob; names = zipfile.ZipFile(glob.glob('/wheels/*.whl')[0]).namelist(); sys.exit(0 if any('_kernel' in n for n in names) else 'the statistics kernel was not built')"

FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV GRADIAG_HOST=0.0.0.0 \
    GRADIAG_PORT=8000 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from the same pinned list as development, so this layer stays cached
# until requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r requirements.txt

# The service, with the kernel built in the first stage; its dependencies are installed above.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 gradiag

USER 10001

EXPOSE 8000

# No curl in the slim image: probe /healthz with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["gradiag", "serve"]

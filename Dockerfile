# paramserver: one image for servers and the built-in workers (CPU).
#   docker build -t paramserver:0.1.0 .
# CUDA variant (GPU workers; servers need no GPU):
#   docker build -t paramserver:0.1.0-cuda \
#     --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# (the CUDA base has no Python 3.11+ preinstalled everywhere: use one that does, e.g. a
# pytorch/pytorch runtime tag, and keep TORCH_INDEX in step with its CUDA version)
ARG BASE=python:3.11-slim
FROM ${BASE}

# The CPU wheel of torch (a few hundred MB) instead of the default CUDA one (several GB).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY paramserver ./paramserver
COPY workers ./workers
# the embedded training loop the torchrun manifest runs (deploy/k8s/workers-torchrun.yaml)
COPY examples ./examples
RUN pip install --extra-index-url "${TORCH_INDEX}" . \
    && useradd --uid 10001 --create-home paramserver \
    && mkdir /checkpoints && chown paramserver /checkpoints

USER paramserver
WORKDIR /home/paramserver
EXPOSE 50051 9100
ENTRYPOINT ["paramserver"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051"]

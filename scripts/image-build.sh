#!/usr/bin/env bash
# Build the uplion image with buildah (no Docker engine needed) unless an image of the same
# inputs exists: its tag is a hash of the Dockerfile, the lock file, pyproject.toml, README.md,
# src/ and the build arguments. Prints the image's name on stdout (progress goes to stderr),
# the build's time and the image's size. Needs root (buildah's chroot isolation).
#
#   ACCELERATOR      cpu (default) or cuda: the image's variant (docs/deploy.md)
#   PYTHON_IMAGE     the base; default: a Debian bookworm base made here (scripts/image-base.sh)
#   TORCH_INDEX_URL  where torch comes from; default: pip's own configuration
#
# pip's find-links folder and certificate bundle (PIP_FIND_LINKS, PIP_CERT, or pip's config
# files) are mounted read-only into the build's steps, and passed as build arguments; so are
# PIP_INDEX_URL and the proxy variables when set.
set -euo pipefail
cd "$(dirname "$0")/.."

accelerator=${ACCELERATOR:-cpu}
case $accelerator in cpu|cuda) ;; *) echo "ACCELERATOR must be cpu or cuda, not '$accelerator'" >&2; exit 2;; esac
scripts/containers-setup.sh >&2
base=${PYTHON_IMAGE:-$(scripts/image-base.sh)}

pip_setting() {  # the environment's PIP_<NAME>, else pip's config files' global.<name>
  local env_name=PIP_${1^^}
  env_name=${env_name//-/_}
  if [ -n "${!env_name:-}" ]; then echo "${!env_name}"; return; fi
  python3 -m pip config get "global.$1" 2>/dev/null || true
}

args=(--build-arg "PYTHON_IMAGE=$base" --build-arg "ACCELERATOR=$accelerator"
      --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}")
mounts=()
find_links=$(pip_setting find-links)
if [ -n "$find_links" ] && [ -d "$find_links" ]; then
  mounts+=(--volume "$find_links:/run/uplion-build/wheels:ro")
  args+=(--build-arg PIP_FIND_LINKS=/run/uplion-build/wheels)
fi
cert=$(pip_setting cert)
if [ -n "$cert" ] && [ -f "$cert" ]; then
  mounts+=(--volume "$cert:/run/uplion-build/ca.crt:ro")
  args+=(--build-arg PIP_CERT=/run/uplion-build/ca.crt)
fi
for name in PIP_INDEX_URL HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  if [ -n "${!name:-}" ]; then args+=(--build-arg "$name=${!name}"); fi
done

inputs=$( {
  git ls-files -co --exclude-standard -- Dockerfile .dockerignore image/requirements.lock \
    pyproject.toml README.md src | sort | xargs sha256sum
  podman image inspect --format '{{.Id}}' "$base" 2>/dev/null || echo "$base"
  printf '%s\n' "${args[@]}"
} | sha256sum | cut -c1-12)
name=localhost/uplion:$accelerator-$inputs

if podman image exists "$name"; then
  echo "image $name is up to date" >&2
else
  echo "building $name from $base" >&2
  start=$(date +%s)
  buildah build --isolation chroot --layers "${args[@]}" "${mounts[@]}" \
    --tag "$name" --file Dockerfile . >&2
  echo "built $name in $(( $(date +%s) - start )) s" >&2
  # Older builds of this variant (2-3 GB each) go; their cached layers stay for the next build.
  podman images --format '{{.Repository}}:{{.Tag}}' \
    | grep -x "localhost/uplion:$accelerator-[0-9a-f]\{12\}" | grep -vx "$name" \
    | xargs -r podman rmi >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$name")
echo "image $name: $(( size / 1000000 )) MB" >&2
echo "$name"

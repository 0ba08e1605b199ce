#!/usr/bin/env bash
# Settings that let buildah and podman run on a host without systemd (cgroups managed by hand,
# events to a file), with runc, and with default ulimits no higher than this process's own
# (podman's defaults, 1048576 open files, fail to start a container under a lower hard limit).
# Idempotent: it rewrites one drop-in file with the same content. Needs root.
set -euo pipefail

conf_dir=/etc/containers/containers.conf.d
conf="$conf_dir/50-uplion-tests.conf"
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" = unlimited ] && nproc=1048576
nofile=$(( nofile < 20000 ? nofile : 20000 ))
nproc=$(( nproc < 32768 ? nproc : 32768 ))

wanted=$(cat <<EOF
# Written by uplion's scripts/containers-setup.sh.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
)
if [ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]; then
  mkdir -p "$conf_dir"
  printf '%s\n' "$wanted" > "$conf"
  echo "wrote $conf"
fi

"""Run a Kubernetes container spec (as a chart or the operator renders it) with ``podman run``.

What the spec says is mirrored, nothing added: ``readOnlyRootFilesystem`` is ``--read-only``
without podman's own writable /tmp, /var/tmp and /run (``--read-only-tmpfs=false``), so only the
spec's ``emptyDir`` mounts are writable (tmpfs); ``runAsUser``/``runAsGroup`` and ``fsGroup`` are
the process's user and groups; ``capabilities.drop: [ALL]`` is ``--cap-drop=ALL`` and
``allowPrivilegeEscalation: false`` is ``no-new-privileges``. Environment variables come from the
spec's ``envFrom`` and ``env`` (ConfigMaps and Secrets as rendered, ``fieldRef`` from the pod's
name and namespace), ``$(VAR)`` references in ``command``/``args`` are expanded as the kubelet
does, and ConfigMap volumes are files mounted read-only.

Containers run on slirp4netns with the host's loopback reachable as ``HOST`` (the tests' Redis,
PostgreSQL and Kubernetes API stand-in listen on 127.0.0.1); a port the test needs is published
on a free loopback port.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ports import free_port

HOST = "10.0.2.2"
"""The host's 127.0.0.1 as the containers see it."""
NETWORK = "slirp4netns:allow_host_loopback=true"
NAMESPACE = "uplion"


@dataclass
class Objects:
    """Rendered ConfigMaps and Secrets by name: what ``envFrom``, ``env`` and volumes read."""

    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":
            self.config_maps[name] = dict(obj.get("data") or {})
        elif obj["kind"] == "Secret":
            data = {key: base64.b64decode(value).decode()
                    for key, value in (obj.get("data") or {}).items()}
            self.secrets[name] = {**data, **(obj.get("stringData") or {})}


@dataclass
class Container:
    """A started container: its name, and the host ports its container ports are published on."""

    name: str
    ports: dict[int, int]

    def logs(self) -> str:
        done = subprocess.run(["podman", "logs", self.name], capture_output=True, text=True,
                              check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        done = subprocess.run(["podman", "inspect", "--format", "{{.State.Running}}", self.name],
                              capture_output=True, text=True, check=False)
        return done.stdout.strip() == "true"

    def wait(self, timeout_s: float) -> int:
        """The exit status once the container stops."""
        done = subprocess.run(["podman", "wait", self.name], capture_output=True, text=True,
                              check=True, timeout=timeout_s)
        return int(done.stdout.strip())

    def remove(self) -> None:
        subprocess.run(["podman", "rm", "--force", "--time", "5", self.name],
                       capture_output=True, check=False)


def _env_from(spec: Mapping[str, Any], objects: Objects) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in spec.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(objects.config_maps[source["configMapRef"]["name"]])
        else:
            env.update(objects.secrets[source["secretRef"]["name"]])
    return env


def _value(item: Mapping[str, Any], objects: Objects, pod: Mapping[str, str]) -> str:
    if "value" in item:
        return str(item["value"])
    source = item["valueFrom"]
    if "fieldRef" in source:
        return pod[source["fieldRef"]["fieldPath"]]
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        return objects.secrets[ref["name"]][ref["key"]]
    ref = source["configMapKeyRef"]
    return objects.config_maps[ref["name"]][ref["key"]]


def _expand(text: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda match: env.get(match[1], match[0]), text)


def environment(spec: Mapping[str, Any], objects: Objects, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it (``envFrom``, then ``env``)."""
    pod = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}
    env = _env_from(spec, objects)
    for item in spec.get("env") or []:
        env[item["name"]] = _expand(_value(item, objects, pod), env)
    return env


def _security(pod_security: Mapping[str, Any], security: Mapping[str, Any]) -> list[str]:
    merged = {**pod_security, **security}
    args = []
    if merged.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if "runAsUser" in merged:
        args += ["--user", f"{merged['runAsUser']}:{merged.get('runAsGroup', 0)}"]
    if "fsGroup" in pod_security:
        args += ["--group-add", str(pod_security["fsGroup"])]
    if "ALL" in (merged.get("capabilities") or {}).get("drop", []):
        args.append("--cap-drop=ALL")
    if merged.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    return args


def _volumes(
    spec: Mapping[str, Any], volumes: list[Mapping[str, Any]], objects: Objects, files: Path,
    shared: Mapping[str, Path],
) -> list[str]:
    by_name = {volume["name"]: volume for volume in volumes}
    args = []
    for mount in spec.get("volumeMounts") or []:
        volume = by_name[mount["name"]]
        path = mount["mountPath"]
        if "emptyDir" in volume and mount["name"] in shared:
            shared[mount["name"]].chmod(0o1777)
            args += ["--volume", f"{shared[mount['name']]}:{path}:rw"]
        elif "emptyDir" in volume:
            args += ["--tmpfs", f"{path}:rw,mode=1777"]
        elif "configMap" in volume:
            data = objects.config_maps[volume["configMap"]["name"]]
            items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            folder = files / f"{mount['name']}-{uuid.uuid4().hex[:8]}"
            folder.mkdir(parents=True)
            for item in items:
                (folder / item["path"]).write_text(data[item["key"]])
            folder.chmod(0o755)
            for child in folder.iterdir():
                child.chmod(0o644)
            args += ["--volume", f"{folder}:{path}:ro"]
        else:
            raise AssertionError(f"volume {volume!r} has no stand-in in tests/containers/pods.py")
    return args


def run(
    image: str,
    pod_spec: Mapping[str, Any],
    container: str,
    objects: Objects,
    files: Path,
    *,
    publish: tuple[int, ...] = (),
    env: Mapping[str, str] | None = None,
    extra: tuple[str, ...] = (),
    shared: Mapping[str, Path] | None = None,
) -> Container:
    """Start the pod spec's container ``container`` detached; ``env`` adds or replaces variables
    (for what a cluster provides: a kubeconfig's path), ``extra`` adds ``podman run`` options,
    ``shared`` gives ``emptyDir`` volumes a host folder that the pod's containers share (an init
    container's output)."""
    spec = next(c for c in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]
                if c["name"] == container)
    name = f"uplion-test-{container}-{uuid.uuid4().hex[:8]}"
    variables = {**environment(spec, objects, pod_name=name), **(env or {})}
    files.mkdir(parents=True, exist_ok=True)
    ports = {port: free_port() for port in publish}
    command = ["podman", "run", "--detach", "--name", name, "--network", NETWORK,
               *[f"--env={key}={value}" for key, value in variables.items()],
               *_security(pod_spec.get("securityContext") or {}, spec.get("securityContext") or {}),
               *_volumes(spec, list(pod_spec.get("volumes") or []), objects, files,
                        shared or {}),
               *[f"--publish=127.0.0.1:{host}:{port}" for port, host in ports.items()], *extra]
    if "command" in spec:
        command += ["--entrypoint", json.dumps(spec["command"])]
    command += [image, *[_expand(arg, variables) for arg in spec.get("args") or []]]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)}\nfailed: {done.stderr}")
    return Container(name, ports)

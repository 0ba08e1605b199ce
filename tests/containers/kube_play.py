"""The chart's workloads played with ``podman kube play`` (podman 4.3), as a cluster would run them.

Names resolve as a cluster's Services do: every pod joins one podman network (``NETWORK``, with
aardvark-dns), and each Deployment is played alone with the names of the Services that select
it as network aliases (``podman kube play --network NET:alias=NAME``), so ``uplion-gateway``
reaches the gateway's pods. Redis and PostgreSQL run as containers aliased ``redis-master`` and
``postgresql``: the names of the upstream charts' Services that the chart's default URLs name.
The host reaches the pods at their network addresses (rootful podman routes the bridge), so
nothing is published on the host.

Each workload is played as the Pods its controller would make (``pod_names``): a Deployment's
replicas as ``<name>-pod-<i>``, the names podman gives them, a Job's pod under the Job's name.
What podman 4.3 does not do as the kubelet does, and what is done for it (nothing else is
changed: every command, argument, variable, mount, probe and securityContext is played as
rendered):

- ``Job``: not a kind ``kube play`` knows; its pod is played as a ``Pod`` and waited on
  (``wait_succeeded``).
- ``$(VAR)`` in ``command`` and ``args`` (the worker's ``--name $(POD_NAME)``): not expanded;
  each pod is played with them expanded from its own variables (``_expand``).
- ``fieldRef: metadata.namespace``: refused; it becomes the namespace's value.
- ``Secret``: ``kube play`` stores a ``kind: Secret`` but then fails to read it back (it expects
  JSON). Secrets are created with ``podman secret create`` as the JSON map of base64 values that
  ``envFrom.secretRef`` and ``secretKeyRef`` read.
- ``ports``: every ``containerPort`` is published on the host's port of the same number (two
  replicas collide). They are left out of the played pods: a ``containerPort`` only names a
  port the container listens on anyway, and the probes' named ports are resolved from the
  rendered manifest (``probes``).
- ``emptyDir``: a podman volume named after the volume, shared by every pod that names it; it
  is renamed ``<pod>-<volume>``, so each pod has its own.
- Init containers are restarted under ``restartPolicy: Always`` (and ``OnFailure``), as if they
  were the pod's own: pods with init containers are played with ``Never``. A container that
  stops is a failure of the test anyway (``eventually``), and no policy restarts a container
  that ``podman kill`` stopped.
- ``runAsNonRoot`` is not checked by podman: ``security_findings`` reports a container of a
  pod that declares it but runs as root; read-only root filesystems, users, dropped capabilities
  and ``no-new-privileges`` are podman's own, checked from ``podman inspect`` there too.

Redis and PostgreSQL run from small images built with buildah on the Debian base that the
uplion image is built on (``service_image``), tagged by a hash of their recipe and base, so they
are built once.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NETWORK = "uplion-kube-play"
NAMESPACE = "uplion"
BUILD_TIMEOUT_S = 900
COMMAND_TIMEOUT_S = 120

SERVICE_RECIPES = {
    "redis": """\
FROM {base}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \\
      --no-install-recommends redis-server >/dev/null && rm -rf /var/lib/apt/lists/*
USER redis
CMD ["/usr/bin/redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", \\
     "--appendonly", "no"]
""",
    # The chart's default URL: user uplion, no password, database uplion; trust from the network.
    "postgresql": """\
FROM {base}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \\
      --no-install-recommends postgresql >/dev/null && rm -rf /var/lib/apt/lists/*
USER postgres
CMD ["/bin/sh", "-c", "PATH=$(echo /usr/lib/postgresql/*/bin):$PATH && \\
initdb -D /tmp/data -U uplion -A trust >/dev/null && \\
echo 'host all all all trust' >> /tmp/data/pg_hba.conf && \\
echo 'CREATE DATABASE uplion' | postgres --single -D /tmp/data postgres >/dev/null && \\
exec postgres -D /tmp/data -k /tmp -c listen_addresses=* -c fsync=off"]
""",
}


def podman(*args: str, stdin: str | None = None, check: bool = True) -> str:
    """``podman args``' output; an ``AssertionError`` with its message when it fails."""
    done = subprocess.run(["podman", *args], input=stdin, capture_output=True, text=True,
                          check=False, timeout=COMMAND_TIMEOUT_S)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def service_image(name: str, base: str) -> str:
    """The image ``localhost/uplion-test-<name>:<hash>`` of ``SERVICE_RECIPES[name]`` on
    ``base``, built with buildah unless it exists."""
    recipe = SERVICE_RECIPES[name].format(base=base)
    base_id = podman("image", "inspect", "--format", "{{.Id}}", base).strip()
    digest = hashlib.sha256(f"{recipe}\n{base_id}".encode()).hexdigest()[:12]
    image = f"localhost/uplion-test-{name}:{digest}"
    if _exists(image):
        return image
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "Containerfile").write_text(recipe)
        done = subprocess.run(
            ["buildah", "build", "--isolation", "chroot", "--quiet", "--tag", image, folder],
            capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        raise AssertionError(f"building {image} failed:\n{done.stderr[-6000:]}")
    return image


def _exists(image: str) -> bool:
    return subprocess.run(["podman", "image", "exists", image], check=False).returncode == 0


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    """The pod spec of a Pod or of a workload's template."""
    spec: dict[str, Any] = (workload["spec"] if workload["kind"] == "Pod"
                            else workload["spec"]["template"]["spec"])
    return spec


def pod_names(workload: Mapping[str, Any]) -> list[str]:
    """The names of a workload's pods: a Job's is the Job's name, a Deployment's replicas are
    named as podman names them (``<name>-pod-<i>``)."""
    name = str(workload["metadata"]["name"])
    if workload["kind"] != "Deployment":
        return [name]
    return [f"{name}-pod-{index}" for index in range(int(workload["spec"].get("replicas", 1)))]


def _expand(text: str, container: Mapping[str, Any], pod: str) -> str:
    """``$(VAR)`` references in a command or argument, expanded as the kubelet does (``$$`` is
    ``$``; an unknown variable stays as written). Variables from Secrets or ConfigMaps are not
    known here: referring to one fails."""
    values, unknown = {}, set()
    for variable in container.get("env") or []:
        ref = (variable.get("valueFrom") or {}).get("fieldRef") or {}
        if "value" in variable:
            values[variable["name"]] = str(variable["value"])
        elif ref.get("fieldPath") == "metadata.name":
            values[variable["name"]] = pod
        elif ref.get("fieldPath") == "metadata.namespace":
            values[variable["name"]] = NAMESPACE
        else:
            unknown.add(variable["name"])

    def value(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        assert match[1] not in unknown, f"$({match[1]}) in {text!r} cannot be expanded here"
        return values.get(match[1], match[0])

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, text)


def _pod(workload: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The Pod ``name`` of a workload, as its controller and kubelet would make it, with podman
    4.3's gaps filled (the module's docstring)."""
    template = workload if workload["kind"] == "Pod" else workload["spec"]["template"]
    spec = copy.deepcopy(pod_spec(workload))
    renamed = {volume["name"]: f"{name}-{volume['name']}" for volume in spec.get("volumes") or []
               if "emptyDir" in volume}
    for volume in spec.get("volumes") or []:
        volume["name"] = renamed.get(volume["name"], volume["name"])
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        container.pop("ports", None)
        for key in ("command", "args"):
            if key in container:
                container[key] = [_expand(str(item), container, name) for item in container[key]]
        for mount in container.get("volumeMounts") or []:
            mount["name"] = renamed.get(mount["name"], mount["name"])
        for variable in container.get("env") or []:
            ref = (variable.get("valueFrom") or {}).get("fieldRef") or {}
            if ref.get("fieldPath") == "metadata.namespace":
                variable.pop("valueFrom")
                variable["value"] = NAMESPACE
    if spec.get("initContainers") and spec.get("restartPolicy", "Always") == "Always":
        spec["restartPolicy"] = "Never"
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": spec}


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's keys and base64 values (``stringData`` encoded, as the API server does)."""
    data = dict(secret.get("data") or {})
    for key, value in (secret.get("stringData") or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    return data


def service_names(workload: Mapping[str, Any], services: Iterable[Mapping[str, Any]]) -> list[str]:
    """The names of the Services whose selector matches the workload's pods."""
    labels = ((workload["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    return [service["metadata"]["name"] for service in services
            if (selector := service["spec"].get("selector"))
            and all(labels.get(key) == value for key, value in selector.items())]


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


@dataclass
class Scenario:
    """The podman objects of one scenario (its network, services, secrets and played pods), all
    removed by ``close``, and removed first if a killed run left them behind."""

    pods: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    volumes: set[str] = field(default_factory=set)
    played: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Workload name -> the manifest played, as rendered (``_playable`` makes podman's copy)."""

    def start(self) -> None:
        backend = podman("info", "--format", "{{.Host.NetworkBackend}}").strip()
        assert backend == "netavark", (
            f"podman's network backend is {backend}: names resolve on a podman network with "
            "netavark and aardvark-dns (apt-get install netavark aardvark-dns)")
        podman("network", "rm", "--force", NETWORK, check=False)
        podman("network", "create", NETWORK)

    def run(self, name: str, image: str, alias: str) -> str:
        """Start a container of ``image`` named ``name`` on the network as ``alias``."""
        podman("rm", "--force", "--time", "0", name, check=False)
        self.containers.append(name)
        podman("run", "--detach", "--name", name, "--network", NETWORK, "--network-alias",
               alias, image)
        return name

    def secret(self, secret: Mapping[str, Any]) -> None:
        name = secret["metadata"]["name"]
        podman("secret", "rm", name, check=False)
        self.secrets.append(name)
        podman("secret", "create", name, "-", stdin=json.dumps(secret_data(secret)))

    def play(self, workload: Mapping[str, Any], config_maps: Iterable[Mapping[str, Any]],
             aliases: Iterable[str] = ()) -> list[str]:
        """Play the pods of a Deployment or Job, each with the ConfigMaps it reads, on the
        network as ``aliases``; their names."""
        self.played[workload["metadata"]["name"]] = copy.deepcopy(dict(workload))
        options = ",".join(f"alias={alias}" for alias in aliases)
        network = f"{NETWORK}:{options}" if options else NETWORK
        names = pod_names(workload)
        for name in names:
            pod = _pod(workload, name)
            spec = pod["spec"]
            used = {v["configMap"]["name"] for v in spec.get("volumes") or [] if "configMap" in v}
            used |= {source["configMapRef"]["name"]
                     for c in [*spec.get("initContainers", []), *spec["containers"]]
                     for source in c.get("envFrom") or [] if "configMapRef" in source}
            maps = [dict(c) for c in config_maps if c["metadata"]["name"] in used]
            volumes = {v["name"] for v in spec.get("volumes") or [] if "emptyDir" in v}
            for volume in volumes - self.volumes:  # left by a run that could not clean up
                podman("volume", "rm", "--force", volume, check=False)
            self.volumes |= volumes | {c["metadata"]["name"] for c in maps}
            self.pods.append(name)
            text = yaml.dump_all([*maps, pod], Dumper=_NoAliases, sort_keys=False)
            try:
                podman("kube", "play", "--replace", "--network", network, "-", stdin=text)
            except AssertionError as error:
                containers = [f"{name}-{c['name']}"
                              for c in [*spec.get("initContainers", []), *spec["containers"]]]
                raise AssertionError("\n".join([str(error), *[
                    f"--- {c}\n{logs(c)}" for c in containers]])) from None
        return names

    def close(self) -> None:
        removing = [subprocess.Popen(["podman", *command, name], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                    for command, names in [(("pod", "rm", "--force", "--time", "0"), self.pods),
                                           (("rm", "--force", "--time", "0"), self.containers)]
                    for name in names]  # side by side: each takes seconds
        for process in removing:
            process.wait(COMMAND_TIMEOUT_S)
        for name in self.secrets:  # one at a time: `secret rm` stops at a name it lacks
            podman("secret", "rm", name, check=False)
        for name in sorted(self.volumes):
            podman("volume", "rm", "--force", name, check=False)
        podman("network", "rm", "--force", NETWORK, check=False)


def inspect(container: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(podman("inspect", "--type", "container", container))[0]
    return found


def address(container: str) -> str:
    """The container's (its pod's) address on the network."""
    return str(inspect(container)["NetworkSettings"]["Networks"][NETWORK]["IPAddress"])


def logs(container: str) -> str:
    done = subprocess.run(["podman", "logs", container], capture_output=True, text=True,
                          check=False, timeout=COMMAND_TIMEOUT_S)
    return (done.stdout + done.stderr)[-6000:]


def state(container: str) -> tuple[str, int, int]:
    """The container's status, exit code and restart count."""
    found = inspect(container)
    return (str(found["State"]["Status"]), int(found["State"]["ExitCode"]),
            int(found.get("RestartCount") or 0))


def eventually(check: Callable[[], bool], what: str, timeout_s: float,
               watched: Iterable[str] = ()) -> None:
    """Poll ``check`` until it holds; fail at once, with its log, when a watched container
    stopped, and with the logs of all of them at the deadline."""
    watched = list(watched)
    deadline = time.monotonic() + timeout_s
    while not check():
        for container in watched:
            status, code, restarts = state(container)
            if status != "running" or restarts:
                raise AssertionError(f"{container} {status} (exit {code}, {restarts} restarts) "
                                     f"before {what}:\n{logs(container)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in {timeout_s} s:\n" + "\n".join(
                f"--- {container}\n{logs(container)}" for container in watched))
        time.sleep(0.1)


def wait_succeeded(container: str, timeout_s: float) -> None:
    """Wait until a Job's container exits 0; fail with its log if it fails (the first exit:
    ``restartPolicy: OnFailure`` would run it again)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, code, restarts = state(container)
        if restarts or (status == "exited" and code != 0):
            raise AssertionError(f"{container} failed (exit {code}):\n{logs(container)}")
        if status == "exited":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{container} still {status} after {timeout_s} s:\n"
                                 f"{logs(container)}")
        time.sleep(0.1)


@dataclass(frozen=True)
class Probe:
    """An HTTP probe a manifest declares, resolved to the port number."""

    container: str
    kind: str
    port: int
    path: str


def probes(spec: Mapping[str, Any]) -> list[Probe]:
    """Every ``httpGet`` probe of a pod spec's containers (named ports resolved)."""
    found = []
    for container in spec["containers"]:
        ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = (container.get(kind) or {}).get("httpGet")
            if get is None:
                continue
            port = get["port"]
            if isinstance(port, str):
                assert port in ports, f"{container['name']}'s {kind} names no port: {port!r}"
                port = ports[port]
            found.append(Probe(container["name"], kind, int(port), get["path"]))
    return found


def security_findings(pod: str, spec: Mapping[str, Any]) -> list[str]:
    """Where a pod's running containers differ from the securityContext their spec declares
    (or podman did not apply it): an empty list when none."""
    pod_security = spec.get("securityContext") or {}
    findings = []
    for container in spec["containers"]:
        name = f"{pod}-{container['name']}"
        declared = {**pod_security, **(container.get("securityContext") or {})}
        found = inspect(name)
        host = found["HostConfig"]
        user = str(found["Config"].get("User") or "0").split(":")[0]
        if declared.get("readOnlyRootFilesystem") and not host["ReadonlyRootfs"]:
            findings.append(f"{name}: root filesystem writable")
        if declared.get("runAsNonRoot") and user in ("0", "root"):
            findings.append(f"{name}: runs as root despite runAsNonRoot")
        if "runAsUser" in declared and user != str(declared["runAsUser"]):
            findings.append(f"{name}: runs as {user}, not {declared['runAsUser']}")
        if "ALL" in (declared.get("capabilities") or {}).get("drop", []) and (
                found["EffectiveCaps"] or []):
            findings.append(f"{name}: capabilities {found['EffectiveCaps']}")
        if declared.get("allowPrivilegeEscalation") is False and "no-new-privileges" not in (
                host.get("SecurityOpt") or []):
            findings.append(f"{name}: privilege escalation allowed")
        if "seccompProfile" in declared and "seccomp=unconfined" in (
                host.get("SecurityOpt") or []):
            findings.append(f"{name}: no seccomp profile")
        writable = sorted(m["Destination"] for m in found["Mounts"] if m["RW"])
        declared_writable = sorted(m["mountPath"] for m in container.get("volumeMounts") or []
                                   if not m.get("readOnly"))
        if writable != declared_writable:
            findings.append(f"{name}: writable mounts {writable}, declared {declared_writable}")
    return findings

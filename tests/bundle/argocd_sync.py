"""The order in which Argo CD applies an Application's objects, as its gitops engine computes it.

A model of ``gitops-engine/pkg/sync`` in argoproj/argo-cd (``sync_phase.go``, ``sync_tasks.go``,
``hook/hook.go``, ``hook/helm/*.go``, ``syncwaves/waves.go``):

- an object with ``argocd.argoproj.io/hook`` is a hook of those phases (``Skip`` alone: not
  applied); without it, ``helm.sh/hook`` maps ``pre-install``/``pre-upgrade`` to PreSync and
  ``post-install``/``post-upgrade`` to PostSync (an object in both runs in both phases), and
  Argo CD's own hook annotation makes it ignore Helm's; every other object is a Sync resource;
- its wave is ``argocd.argoproj.io/sync-wave``, else ``helm.sh/hook-weight``, else 0;
- tasks sort by phase (PreSync, Sync, PostSync), wave, kind (Helm's install order; unknown kinds,
  custom resources, last) and name; Argo CD applies one wave at a time and waits until it is
  healthy (a Job: complete) before the next. SyncFail hooks run only when a sync fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PHASES = ("PreSync", "Sync", "PostSync")
HOOK = "argocd.argoproj.io/hook"
WAVE = "argocd.argoproj.io/sync-wave"
HELM_HOOK = "helm.sh/hook"
HELM_WEIGHT = "helm.sh/hook-weight"
HELM_PHASES = {
    "pre-install": "PreSync",
    "pre-upgrade": "PreSync",
    "post-install": "PostSync",
    "post-upgrade": "PostSync",
}
# sync_tasks.go's kindOrder (Helm's kind_sorter): these first, in this order; anything else after.
KIND_ORDER = (
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
    "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
    "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
    "IngressClass", "Ingress", "APIService",
)


@dataclass(frozen=True)
class Task:
    """One object applied in one phase."""

    phase: str
    wave: int
    hook: bool
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    def key(self) -> tuple[int, int, int, str]:
        kind = KIND_ORDER.index(self.kind) - len(KIND_ORDER) if self.kind in KIND_ORDER else 0
        return PHASES.index(self.phase), self.wave, kind, self.name

    def step(self) -> tuple[int, int]:
        """(phase, wave): Argo CD finishes each step before it starts the next."""
        return PHASES.index(self.phase), self.wave

    def __str__(self) -> str:
        return f"{self.phase}/{self.wave} {self.kind}/{self.name}"


def _csv(annotations: dict[str, str], key: str) -> list[str]:
    return [part.strip() for part in annotations.get(key, "").split(",") if part.strip()]


def phases(obj: dict[str, Any]) -> tuple[list[str], bool]:
    """The phases ``obj`` is applied in, and whether it is a hook."""
    annotations = obj.get("metadata", {}).get("annotations") or {}
    if HOOK in annotations:
        types = _csv(annotations, HOOK)
        if types == ["Skip"]:
            return [], True
        return sorted({t for t in types if t in PHASES}, key=PHASES.index), True
    helm = annotations.get(HELM_HOOK)
    if helm is not None and helm != "crd-install":
        mapped = {HELM_PHASES[t] for t in _csv(annotations, HELM_HOOK) if t in HELM_PHASES}
        return sorted(mapped, key=PHASES.index), True
    return ["Sync"], False


def wave(obj: dict[str, Any]) -> int:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    for key in (WAVE, HELM_WEIGHT):
        try:
            return int(annotations[key])
        except (KeyError, ValueError):
            continue
    return 0


def tasks(objects: list[dict[str, Any]]) -> list[Task]:
    """Every object's tasks, in the order Argo CD applies them."""
    found = []
    for obj in objects:
        obj_phases, hook = phases(obj)
        found += [Task(phase, wave(obj), hook, obj) for phase in obj_phases]
    return sorted(found, key=Task.key)


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return dict(obj["spec"])
    template = obj.get("spec", {}).get("template", {}).get("spec")
    return dict(template) if obj["kind"] == "Job" and template else None


def reads(obj: dict[str, Any], objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(kind, name) of what a Job's or Pod's pod needs before it can start or do its work: its
    ConfigMaps and Secrets (environment, volumes, pull secrets), its ServiceAccount and the Roles,
    ClusterRoles and bindings that grant that account its rights."""
    pod = _pod_spec(obj)
    if pod is None:
        return set()
    needed: set[tuple[str, str]] = set()
    containers = [*pod.get("initContainers", []), *pod.get("containers", [])]
    for container in containers:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                needed.add(("ConfigMap", source["configMapRef"]["name"]))
            if "secretRef" in source:
                needed.add(("Secret", source["secretRef"]["name"]))
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                needed.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
            if "secretKeyRef" in ref:
                needed.add(("Secret", ref["secretKeyRef"]["name"]))
    for volume in pod.get("volumes", []):
        sources = [volume, *volume.get("projected", {}).get("sources", [])]
        for source in sources:
            if "configMap" in source:
                needed.add(("ConfigMap", source["configMap"]["name"]))
            if "secret" in source:
                secret = source["secret"]
                needed.add(("Secret", secret.get("secretName") or secret["name"]))
    needed |= {("Secret", ref["name"]) for ref in pod.get("imagePullSecrets", [])}
    account = pod.get("serviceAccountName")
    if account:
        needed.add(("ServiceAccount", account))
        for binding in objects:
            if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            if any(s.get("kind") == "ServiceAccount" and s.get("name") == account
                   for s in binding.get("subjects", [])):
                needed.add((binding["kind"], binding["metadata"]["name"]))
                needed.add((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
    return needed


def misordered(objects: list[dict[str, Any]]) -> list[str]:
    """Each dependency of a Job or Pod that Argo CD would not have finished applying before it
    starts: rendered in the same or a later (phase, wave) step, or not applied at all."""
    ordered = tasks(objects)
    steps: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for task in ordered:
        steps.setdefault((task.kind, task.name), []).append(task.step())
    rendered = {(o["kind"], o["metadata"]["name"]) for o in objects}
    problems = []
    for task in ordered:
        for dependency in sorted(reads(task.obj, objects)):
            if dependency not in rendered:
                continue  # made outside the chart (e.g. from the vault), before Argo CD syncs
            first = min(steps.get(dependency, [(len(PHASES), 0)]))
            if first >= task.step():
                problems.append(f"{task} reads {dependency[0]}/{dependency[1]}, applied at "
                                f"{_describe(first)}")
    return problems


def _describe(step: tuple[int, int]) -> str:
    phase, wave_ = step
    return "no step (never applied)" if phase >= len(PHASES) else f"{PHASES[phase]}/{wave_}"

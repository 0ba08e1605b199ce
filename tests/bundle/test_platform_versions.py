"""The node OS, Kubernetes and GPU operator versions the roles pin agree with each other and with
what the GPU operator supports.

NVIDIA's platform support page for GPU operator v26.7 (NVIDIA/cloud-native-docs,
gpu-operator/platform-support.rst) validates its driver containers on Ubuntu 24.04 LTS with
Kubernetes 1.32-1.36 and Ubuntu 22.04 LTS with 1.33-1.36; Debian is not on it. kubeadm 1.35 pins
the pause image 3.10.1 (cmd/kubeadm/app/constants).
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.bundle.ansible_env import INVENTORIES, ROLES, ROOT

GPU_OPERATOR = "v26.7.0"
SUPPORTED = {"Ubuntu 24.04": ((1, 32), (1, 36)), "Ubuntu 22.04": ((1, 33), (1, 36))}
PAUSE = {(1, 35): "registry.k8s.io/pause:3.10.1"}


def defaults(role: str) -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    return found


def minor(version: str) -> tuple[int, int]:
    major, minor_, *_ = version.lstrip("v").split(".")
    return int(major), int(minor_)


def test_the_gpu_operator_is_the_version_the_table_is_from() -> None:
    assert defaults("gpu_operator")["gpu_operator_chart_version"] == GPU_OPERATOR


def test_kubernetes_is_inside_the_gpu_operators_range_on_every_node_release() -> None:
    kubernetes = minor(defaults("kubernetes")["kubernetes_version"])
    releases = defaults("node_prep")["node_prep_supported_releases"]
    assert releases
    for release in releases:
        low, high = SUPPORTED[release]
        assert low <= kubernetes <= high, (release, kubernetes)
    assert defaults("node_prep")["node_prep_containerd_sandbox_image"] == PAUSE[kubernetes]


def test_cloud_images_are_a_release_node_prep_accepts() -> None:
    releases = defaults("node_prep")["node_prep_supported_releases"]
    aws = defaults("aws_nodes")
    assert aws["aws_nodes_image_owner"] == "099720109477"  # Canonical
    assert "ubuntu-noble-24.04-amd64-server" in aws["aws_nodes_image_name"]
    assert aws["aws_nodes_ssh_user"] == "ubuntu"
    openstack = defaults("openstack_nodes")
    assert openstack["openstack_nodes_image"] == "ubuntu-24.04"
    assert openstack["openstack_nodes_ssh_user"] == "ubuntu"
    assert "Ubuntu 24.04" in releases
    example = yaml.safe_load(
        (INVENTORIES / "openstack" / "group_vars" / "all" / "main.yml").read_text())
    assert example["openstack_nodes_image"] == "CC-Ubuntu24.04"


def test_the_docs_name_the_pinned_versions() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    versions = text[text.index("### Versions"):]
    assert defaults("kubernetes")["kubernetes_version"] in versions
    assert GPU_OPERATOR in versions
    assert "Ubuntu 24.04" in versions

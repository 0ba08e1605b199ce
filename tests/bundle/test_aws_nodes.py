"""The aws_nodes role against moto's EC2 server: the real amazon.aws modules and boto3 speak the
EC2 API to a local endpoint (AWS_ENDPOINT_URL). Provision, a second run that changes nothing,
a smaller pool, teardown; boto3 checks what exists after each step."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from tests.bundle import ansible_env
from tests.ports import free_port

REGION = "eu-west-1"
CLUSTER = "moto"
ADMIN_CIDR = "198.51.100.0/24"
# moto's account id: the owner of the images registered here.
ACCOUNT = "123456789012"
# What the role left in the in-memory inventory: the groups, and every node's address.
REPORT = (
    "{{ {'groups': groups, 'addresses': groups['all'] | difference(['localhost'])"
    " | map('extract', hostvars, 'ansible_host') | list} | to_json }}"
)
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbF8Gv6k0m9sYwKZ5m0y6cS3l6cUuQyQ5c0c0c0c0c0 test"


@pytest.fixture
def endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def ec2(endpoint: str) -> Any:
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


class Runner:
    """Runs the aws_nodes role on the controller and reports the groups it filled."""

    def __init__(self, tmp_path: Path, endpoint: str) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **ansible_env.environment(),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        self.inventory = tmp_path / "hosts.yml"
        self.inventory.write_text(
            yaml.safe_dump(
                {
                    "all": {
                        "hosts": {
                            "localhost": {
                                "ansible_connection": "local",
                                "ansible_python_interpreter": sys.executable,
                            }
                        }
                    }
                }
            )
        )
        self.groups = tmp_path / "groups.json"
        self.playbook = tmp_path / "nodes.yml"
        self.playbook.write_text(
            yaml.safe_dump(
                [
                    {
                        "name": "Nodes",
                        "hosts": "localhost",
                        "gather_facts": False,
                        "roles": ["uplion.platform.aws_nodes"],
                    },
                    {
                        "name": "Report the groups",
                        "hosts": "localhost",
                        "gather_facts": False,
                        "tasks": [
                            {
                                "name": "Write them",
                                "ansible.builtin.copy": {
                                    "dest": str(self.groups),
                                    "mode": "0600",
                                    "content": REPORT,
                                },
                                "changed_when": False,
                            }
                        ],
                    },
                ]
            )
        )

    def run(self, **variables: Any) -> str:
        values = {
            "aws_nodes_region": REGION,
            "aws_nodes_cluster_name": CLUSTER,
            "aws_nodes_admin_cidrs": [ADMIN_CIDR],
            "aws_nodes_image_owner": ACCOUNT,
            "aws_nodes_public_key": PUBLIC_KEY,
            **variables,
        }
        extra = self.tmp_path / "vars.json"
        extra.write_text(json.dumps(values))
        done = ansible_env.run(
            ["ansible-playbook", "-i", str(self.inventory), str(self.playbook), "-e", f"@{extra}"],
            env=self.env,
            timeout=600,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        return output

    def reported(self) -> tuple[dict[str, list[str]], list[str]]:
        """The node groups the role filled, and every node's ansible_host."""
        report = json.loads(self.groups.read_text())
        groups = {
            name: report["groups"].get(name, [])
            for name in ("control_plane", "gpu_workers", "cpu_workers")
        }
        return groups, report["addresses"]


def _running(ec2: Any) -> dict[str, dict[str, Any]]:
    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "tag:uplion-cluster", "Values": [CLUSTER]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    instances = [instance for reservation in reservations for instance in reservation["Instances"]]
    return {next(tag["Value"] for tag in i["Tags"] if tag["Key"] == "Name"): i for i in instances}


def _ubuntu_image(ec2: Any) -> str:
    """An x86_64 image named like Canonical's Ubuntu 24.04, owned by moto's account (moto keeps
    an image's architecture only when it is made from an instance)."""
    filters = [{"Name": "architecture", "Values": ["x86_64"]}]
    base = ec2.describe_images(Filters=filters)["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    name = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20260801"
    image: str = ec2.create_image(InstanceId=instance, Name=name)["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    return image


def test_provision_rerun_shrink_and_tear_down(tmp_path: Path, endpoint: str, ec2: Any) -> None:
    image = _ubuntu_image(ec2)
    runner = Runner(tmp_path, endpoint)
    pools = {
        "aws_nodes_gpu_workers": {"count": 2, "instance_type": "g5.xlarge", "volume_size": 200},
        "aws_nodes_cpu_workers": {"count": 1, "instance_type": "m6i.xlarge", "volume_size": 100},
    }

    runner.run(**pools)
    running = _running(ec2)
    assert sorted(running) == ["moto-cp-0", "moto-cpu-0", "moto-gpu-0", "moto-gpu-1"]
    assert {i["ImageId"] for i in running.values()} == {image}
    assert running["moto-gpu-1"]["InstanceType"] == "g5.xlarge"
    assert running["moto-cp-0"]["InstanceType"] == "m6i.large"
    assert {tag["Key"]: tag["Value"] for tag in running["moto-gpu-0"]["Tags"]}[
        "uplion-group"
    ] == "gpu_workers"
    groups, addresses = runner.reported()
    assert groups == {
        "control_plane": ["moto-cp-0"],
        "gpu_workers": ["moto-gpu-0", "moto-gpu-1"],
        "cpu_workers": ["moto-cpu-0"],
    }
    assert sorted(addresses) == sorted(i["PublicIpAddress"] for i in running.values())
    group = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["moto-nodes"]}])
    rules = group["SecurityGroups"][0]["IpPermissions"]
    admin = sorted(
        rule["FromPort"]
        for rule in rules
        if [r["CidrIp"] for r in rule.get("IpRanges", [])] == [ADMIN_CIDR]
    )
    assert admin == [22, 6443]
    assert any(rule["IpProtocol"] == "-1" and rule["UserIdGroupPairs"] for rule in rules)
    assert ec2.describe_key_pairs(KeyNames=[CLUSTER])["KeyPairs"]

    assert "changed=0" in runner.run(**pools), "a second run changed something"
    assert sorted(_running(ec2)) == ["moto-cp-0", "moto-cpu-0", "moto-gpu-0", "moto-gpu-1"]

    runner.run(**{**pools, "aws_nodes_gpu_workers": {**pools["aws_nodes_gpu_workers"], "count": 1}})
    assert sorted(_running(ec2)) == ["moto-cp-0", "moto-cpu-0", "moto-gpu-0"]
    assert runner.reported()[0]["gpu_workers"] == ["moto-gpu-0"]

    runner.run(aws_nodes_state="absent")
    assert _running(ec2) == {}
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:uplion-cluster", "Values": [CLUSTER]}])["Vpcs"]
    assert vpcs == []
    assert (
        ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["moto-nodes"]}])[
            "SecurityGroups"
        ]
        == []
    )
    assert ec2.describe_key_pairs()["KeyPairs"] == []

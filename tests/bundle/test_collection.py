"""The Ansible collection uplion.platform: ansible-lint (production profile), syntax of every
playbook against every example inventory, the inventory check, role argument specs, the
templates the node roles render, and the artifact ``ansible-galaxy collection build`` makes."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundle import ansible_env
from tests.bundle.ansible_env import INVENTORIES, PLAYBOOKS, ROLES, ROOT

PLAYBOOK_NAMES = [
    "site",
    "inventory",
    "provision",
    "prepare",
    "kubernetes",
    "addons",
    "gitops",
    "destroy",
]
EXAMPLE_INVENTORIES = ["aws", "openstack", "baremetal"]
# The one warning a cloud inventory gives: its groups fill at run time.
EXPECTED_WARNING = "provided hosts list is empty, only localhost is available"


def _warnings(output: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if line.startswith("[WARNING]") and EXPECTED_WARNING not in line
    ]


def _spec(role: str) -> dict[str, Any]:
    specs: dict[str, Any] = yaml.safe_load(
        (ROLES / role / "meta" / "argument_specs.yml").read_text()
    )
    return specs["argument_specs"]


def _defaults(role: str) -> dict[str, Any]:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}


def _playbook(path: Path, plays: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


# --- lint and syntax ------------------------------------------------------------------------


def test_ansible_lint_production_profile() -> None:
    done = ansible_env.run(["ansible-lint", "--nocolor"], timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output


def test_playbooks_are_the_documented_set() -> None:
    assert sorted(path.stem for path in PLAYBOOKS.glob("*.yml")) == sorted(PLAYBOOK_NAMES)


@pytest.mark.parametrize("inventory", EXAMPLE_INVENTORIES)
def test_every_playbook_passes_syntax_check(inventory: str) -> None:
    playbooks = [str(PLAYBOOKS / f"{name}.yml") for name in PLAYBOOK_NAMES]
    done = ansible_env.run(
        ["ansible-playbook", "--syntax-check", "-i", str(INVENTORIES / inventory), *playbooks]
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for playbook in playbooks:
        assert f"playbook: {playbook}" in done.stdout
    assert _warnings(output) == []


# --- the inventory check ----------------------------------------------------------------------


def _validate(tmp_path: Path, inventory: Path) -> str:
    """Run the validate_inventory role against an inventory; its output, or raise on success."""
    playbook = _playbook(
        tmp_path / "validate.yml",
        [
            {
                "name": "Check the inventory",
                "hosts": "localhost",
                "connection": "local",
                "gather_facts": False,
                "roles": ["uplion.platform.validate_inventory"],
            }
        ],
    )
    done = ansible_env.run(["ansible-playbook", "-i", str(inventory), str(playbook)])
    return f"rc={done.returncode}\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("inventory", EXAMPLE_INVENTORIES)
def test_example_inventories_pass_the_inventory_check(inventory: str, tmp_path: Path) -> None:
    output = _validate(tmp_path, INVENTORIES / inventory)
    assert output.startswith("rc=0"), output
    assert "failed=0" in output


PULSAR = {"url": "pulsar://pulsar-broker.pulsar.svc.cluster.local:6650",
          "admin_url": "http://pulsar-broker.pulsar.svc.cluster.local:8080",
          "tenant": "uplion", "namespaces": ["test", "staging", "production"]}
BAREMETAL_VARS = {"uplion_infrastructure": "baremetal", "uplion_kubeconfig": "/tmp/kubeconfig",
                  "uplion_pulsar": PULSAR}
THREE_GROUPS = {
    "control_plane": {"hosts": {"cp-0": None}},
    "gpu_workers": {"hosts": {"gpu-0": None}},
    "cpu_workers": {},
}

BAD_INVENTORIES: dict[str, tuple[dict[str, Any], str]] = {
    "no kubeconfig": (
        {"all": {"vars": {"uplion_infrastructure": "baremetal", "uplion_pulsar": PULSAR},
                 "children": THREE_GROUPS}},
        "The inventory does not set uplion_kubeconfig",
    ),
    "no pulsar settings": (
        {"all": {"vars": {"uplion_infrastructure": "baremetal", "uplion_kubeconfig": "/tmp/k"},
                 "children": THREE_GROUPS}},
        "The inventory does not set uplion_pulsar",
    ),
    "unknown infrastructure": (
        {
            "all": {
                "vars": {**BAREMETAL_VARS, "uplion_infrastructure": "gcp"},
                "children": THREE_GROUPS,
            }
        },
        "uplion_infrastructure is 'gcp'; it must be one of aws, openstack, baremetal",
    ),
    "undeclared group": (
        {
            "all": {
                "vars": BAREMETAL_VARS,
                "children": {
                    "control_plane": {"hosts": {"cp-0": None}},
                    "gpu_workers": {"hosts": {"gpu-0": None}},
                },
            }
        },
        "does not declare the group(s) cpu_workers",
    ),
    "node in two roles": (
        {
            "all": {
                "vars": BAREMETAL_VARS,
                "children": {**THREE_GROUPS, "cpu_workers": {"hosts": {"gpu-0": None}}},
            }
        },
        "Node(s) gpu-0 are in more than one of control_plane, gpu_workers, cpu_workers",
    ),
    "even control plane": (
        {
            "all": {
                "vars": BAREMETAL_VARS,
                "children": {
                    **THREE_GROUPS,
                    "control_plane": {"hosts": {"cp-0": None, "cp-1": None}},
                },
            }
        },
        "The control_plane group has 2 nodes: etcd needs an odd number",
    ),
    "empty control plane": (
        {"all": {"vars": BAREMETAL_VARS, "children": {**THREE_GROUPS, "control_plane": {}}}},
        "The control_plane group is empty",
    ),
    "aws without admin addresses": (
        {
            "all": {
                "vars": {**BAREMETAL_VARS, "uplion_infrastructure": "aws"},
                "children": {"control_plane": {}, "gpu_workers": {}, "cpu_workers": {}},
            }
        },
        "Set aws_nodes_admin_cidrs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INVENTORIES))
def test_bad_inventories_fail_fast_with_a_clear_message(case: str, tmp_path: Path) -> None:
    inventory, message = BAD_INVENTORIES[case]
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    output = _validate(tmp_path, path)
    assert not output.startswith("rc=0"), output
    assert message in " ".join(output.split()), output


def test_destroy_does_nothing_unless_confirmed(tmp_path: Path) -> None:
    """destroy.yml without "yes": it fails, resets no node and deletes nothing (the nodes here
    do not exist: any attempt to reach them would show as unreachable)."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": BAREMETAL_VARS,
                    "children": {
                        **THREE_GROUPS,
                        "control_plane": {"hosts": {"cp-0": {"ansible_host": "192.0.2.10"}}},
                    },
                }
            }
        )
    )
    done = ansible_env.run(
        [
            "ansible-playbook",
            "-i",
            str(inventory),
            str(PLAYBOOKS / "destroy.yml"),
            "-e",
            "uplion_destroy_confirmation=no",
        ]
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Not confirmed; nothing was destroyed." in output
    assert "unreachable=1" not in output
    assert "changed=1" not in output


def test_provision_on_bare_metal_checks_the_inventory_and_creates_nothing() -> None:
    done = ansible_env.run(
        ["ansible-playbook", "-i", str(INVENTORIES / "baremetal"), str(PLAYBOOKS / "provision.yml")]
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Check the inventory declares its groups" in output
    assert "changed=0" in output
    assert "failed=0" in output


# --- argument specs ---------------------------------------------------------------------------


def test_every_role_has_argument_specs_defaults_and_a_readme() -> None:
    assert {"aws_nodes", "openstack_nodes", "node_prep", "kubernetes", "validate_inventory"} <= set(
        ansible_env.roles()
    )
    for role in ansible_env.roles():
        for path in ("meta/argument_specs.yml", "meta/main.yml", "defaults/main.yml", "README.md"):
            assert (ROLES / role / path).is_file(), f"{role} has no {path}"


@pytest.mark.parametrize("role", ansible_env.roles())
def test_every_default_has_a_documented_spec_entry_and_back(role: str) -> None:
    specs = _spec(role)
    options = specs["main"]["options"]
    defaults = _defaults(role)
    readme = (ROLES / role / "README.md").read_text()
    assert sorted(defaults) == sorted(options), (
        "defaults/main.yml and the main entry point's options differ"
    )
    for name, option in options.items():
        assert name.startswith(f"{role}_"), f"{name} is not prefixed with {role}_"
        assert option.get("description"), f"{name} has no description"
        assert name in readme, f"{name} is not documented in the README"
        if "default" in option:
            assert option["default"] == defaults[name], (
                f"{name}: the spec's default is not defaults/main.yml's"
            )
    for entry, spec in specs.items():
        for name, option in (spec.get("options") or {}).items():
            if name in options:
                assert option.get("default") == options[name].get("default"), (
                    f"entry point {entry}: {name}'s default differs from main's"
                )


@pytest.mark.parametrize("role", ansible_env.roles())
def test_defaults_satisfy_their_spec(role: str) -> None:
    """The validator Ansible runs before a role's tasks accepts the role's own defaults (those
    without a template; a template is only known at run time)."""
    options = _spec(role)["main"]["options"]
    literal = {
        name: value for name, value in _defaults(role).items() if "{{" not in json.dumps(value)
    }
    assert ansible_env.argument_errors(options, literal) == []


def _wrong_values(options: dict[str, Any]) -> list[tuple[str, Any]]:
    """One value per option that its spec must refuse."""
    wrong: list[tuple[str, Any]] = []
    for name, option in options.items():
        kind = option.get("type", "str")
        if "choices" in option:
            wrong.append((name, "no-such-choice"))
        elif kind == "bool":
            wrong.append((name, "maybe"))
        elif kind == "int":
            wrong.append((name, "many"))
        elif kind == "dict" and any(
            sub.get("required") for sub in (option.get("options") or {}).values()
        ):
            wrong.append((name, {}))
        elif kind == "list" and option.get("elements") == "int":
            wrong.append((name, ["not-a-number"]))
    return wrong


def test_roles_refuse_wrong_arguments(tmp_path: Path) -> None:
    """Each role, through every entry point, stops at its argument spec on a wrong value and
    names the option: the spec is wired to the role, a typo cannot pass silently."""
    cases = [
        (role, entry, name, value)
        for role in ansible_env.roles()
        for entry, spec in _spec(role).items()
        for name, value in _wrong_values(spec.get("options") or {})
    ]
    assert len(cases) >= 20
    tasks = []
    for role, entry, name, value in cases:
        label = f"{role}.{entry}: {name}"
        tasks.append(
            {
                "name": label,
                "block": [
                    {
                        "name": "Include the role with a wrong value",
                        "ansible.builtin.include_role": {
                            "name": f"uplion.platform.{role}",
                            "tasks_from": entry,
                        },
                        "vars": {name: value},
                    },
                    {"name": "Accepted", "ansible.builtin.fail": {"msg": f"ACCEPTED {label}"}},
                ],
                "rescue": [
                    {
                        "name": "Check the refusal names the option",
                        "ansible.builtin.assert": {
                            "that": [
                                f"'{name}' in ansible_failed_result.msg",
                                "'ACCEPTED' not in ansible_failed_result.msg",
                            ],
                            "fail_msg": f"REFUSAL {label}: {{{{ ansible_failed_result.msg }}}}",
                        },
                    },
                ],
            }
        )
    playbook = _playbook(
        tmp_path / "wrong.yml",
        [
            {
                "name": "Wrong arguments",
                "hosts": "localhost",
                "connection": "local",
                "gather_facts": False,
                # Defaults that read facts get plain values: only the spec is under test.
                "vars": {
                    "kubernetes_node_ip": "10.0.0.10",
                    "uplion_kubeconfig": str(tmp_path / "kubeconfig"),
                },
                "tasks": tasks,
            }
        ],
    )
    done = ansible_env.run(["ansible-playbook", "-i", "localhost,", str(playbook)], timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"rescued={len(cases)}" in output, output


# --- templates --------------------------------------------------------------------------------


def _render(
    tmp_path: Path,
    inventory: dict[str, Any],
    role: str,
    variables: dict[str, Any],
    play: dict[str, Any],
) -> None:
    """Run a play with a role's defaults and, over them, ``variables``, on local hosts."""
    hosts = tmp_path / "hosts.yml"
    inventory["all"]["vars"] = {"ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    hosts.write_text(yaml.safe_dump(inventory))
    overrides = tmp_path / "overrides.yml"
    overrides.write_text(yaml.safe_dump(variables))
    playbook = _playbook(
        tmp_path / "render.yml",
        [
            {
                "name": "Render",
                "connection": "local",
                "gather_facts": False,
                "vars_files": [str(ROLES / role / "defaults" / "main.yml"), str(overrides)],
                **play,
            }
        ],
    )
    done = ansible_env.run(["ansible-playbook", "-i", str(hosts), str(playbook)])
    assert done.returncode == 0, done.stdout + done.stderr


JOIN_COMMAND = (
    "kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef "
    "--discovery-token-ca-cert-hash sha256:" + "ab" * 32
)
CERTIFICATE_KEY = "e6a2eb8581237ab72a4f494f30285ec12a9694d750b9785706a83bfcbbbd2204"


def test_kubeadm_configurations(tmp_path: Path) -> None:
    """kubeadm's init and join configurations as the kubernetes role renders them."""
    cluster = {
        "all": {
            "children": {
                "control_plane": {
                    "hosts": {
                        "cp-0": {"ansible_host": "203.0.113.10", "node_ip": "10.0.0.10"},
                        "cp-1": {"ansible_host": "203.0.113.11", "node_ip": "10.0.0.11"},
                        "cp-2": {"ansible_host": "203.0.113.12", "node_ip": "10.0.0.12"},
                    }
                },
                "gpu_workers": {
                    "hosts": {"gpu-0": {"ansible_host": "203.0.113.20", "node_ip": "10.0.0.20"}},
                    "vars": {"node_labels": {"uplion.ai/pool": "gpu", "uplion.ai/gpu": "l4"}},
                },
                "cpu_workers": {},
            }
        }
    }
    templates = ROLES / "kubernetes" / "templates"
    _render(
        tmp_path,
        cluster,
        "kubernetes",
        {
            # The role's defaults lose to the inventory in a real run; here they are a vars file.
            "kubernetes_node_ip": "{{ node_ip }}",
            "kubernetes_node_labels": "{{ node_labels | default({}) }}",
            "kubernetes_api_server_cert_sans": ["api.uplion.example"],
            "kubernetes_join_command": {"stdout": JOIN_COMMAND},
            "kubernetes_upload_certs": {
                "stdout_lines": ["[upload-certs] Using certificate key:", CERTIFICATE_KEY]
            },
        },
        {
            "hosts": "control_plane:gpu_workers",
            "tasks": [
                {
                    "name": "Publish",
                    "ansible.builtin.set_fact": {
                        "kubernetes_node_address": "{{ kubernetes_node_ip }}"
                    },
                },
                {
                    "name": "Endpoint",
                    "ansible.builtin.set_fact": {
                        "kubernetes_endpoint": (
                            "{{ hostvars[groups.control_plane[0]].kubernetes_node_address }}:6443"
                        )
                    },
                },
                {
                    "name": "Init",
                    "ansible.builtin.template": {
                        "src": str(templates / "kubeadm-init.yaml.j2"),
                        "dest": str(tmp_path / "{{ inventory_hostname }}-init.yaml"),
                        "mode": "0600",
                    },
                },
                {
                    "name": "Join",
                    "ansible.builtin.template": {
                        "src": str(templates / "kubeadm-join.yaml.j2"),
                        "dest": str(tmp_path / "{{ inventory_hostname }}-join.yaml"),
                        "mode": "0600",
                    },
                },
            ],
        },
    )

    init = {
        doc["kind"]: doc for doc in yaml.safe_load_all((tmp_path / "cp-0-init.yaml").read_text())
    }
    assert sorted(init) == ["ClusterConfiguration", "InitConfiguration", "KubeletConfiguration"]
    assert init["InitConfiguration"]["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["InitConfiguration"]["localAPIEndpoint"] == {
        "advertiseAddress": "10.0.0.10",
        "bindPort": 6443,
    }
    registration = init["InitConfiguration"]["nodeRegistration"]
    assert registration["name"] == "cp-0"
    assert registration["criSocket"] == "unix:///run/containerd/containerd.sock"
    assert registration["kubeletExtraArgs"] == [{"name": "node-ip", "value": "10.0.0.10"}]
    cluster_config = init["ClusterConfiguration"]
    assert cluster_config["kubernetesVersion"] == "v1.35.4"
    assert cluster_config["controlPlaneEndpoint"] == "10.0.0.10:6443"
    assert cluster_config["networking"] == {
        "podSubnet": "10.244.0.0/16",
        "serviceSubnet": "10.96.0.0/12",
        "dnsDomain": "cluster.local",
    }
    assert sorted(cluster_config["apiServer"]["certSANs"]) == sorted(
        ["api.uplion.example", "10.0.0.10", "203.0.113.10", "203.0.113.11", "203.0.113.12"]
    )
    assert init["KubeletConfiguration"]["cgroupDriver"] == "systemd"

    control_plane_join = yaml.safe_load((tmp_path / "cp-1-join.yaml").read_text())
    assert control_plane_join["kind"] == "JoinConfiguration"
    assert control_plane_join["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.0.0.10:6443",
        "token": "abcdef.0123456789abcdef",
        "caCertHashes": ["sha256:" + "ab" * 32],
    }
    assert control_plane_join["controlPlane"] == {
        "localAPIEndpoint": {"advertiseAddress": "10.0.0.11", "bindPort": 6443},
        "certificateKey": CERTIFICATE_KEY,
    }

    worker_join = yaml.safe_load((tmp_path / "gpu-0-join.yaml").read_text())
    assert "controlPlane" not in worker_join
    assert worker_join["nodeRegistration"]["kubeletExtraArgs"] == [
        {"name": "node-ip", "value": "10.0.0.20"},
        {"name": "node-labels", "value": "uplion.ai/gpu=l4,uplion.ai/pool=gpu"},
    ]


@pytest.mark.parametrize("nvidia", [False, True])
def test_containerd_configuration(nvidia: bool, tmp_path: Path) -> None:
    """containerd's configuration as node_prep renders it, with and without NVIDIA's runtime: a
    top-level file that imports the drop-in directory (where the GPU operator's toolkit writes
    99-nvidia.toml), and node_prep's own drop-in with its settings (the molecule scenario checks
    the merged result through `containerd config dump`)."""
    templates = ROLES / "node_prep" / "templates"
    _render(
        tmp_path,
        {"all": {"hosts": {"node": None}}},
        "node_prep",
        {
            "node_prep_nvidia_container_toolkit": nvidia,
        },
        {
            "hosts": "all",
            "tasks": [
                {
                    "name": f"Render {name}",
                    "ansible.builtin.template": {
                        "src": str(templates / name),
                        "dest": str(tmp_path / name.removesuffix(".j2")),
                        "mode": "0644",
                    },
                }
                for name in ("containerd-config.toml.j2", "containerd-uplion.toml.j2")
            ],
        },
    )
    top = tomllib.loads((tmp_path / "containerd-config.toml").read_text())
    assert top["version"] == 2
    assert top["imports"] == ["/etc/containerd/conf.d/*.toml"]
    # More than version and imports: the toolkit's clean-up never drops the imports line.
    assert len(top) > 2
    assert "plugins" not in top
    config = tomllib.loads((tmp_path / "containerd-uplion.toml").read_text())
    assert config["version"] == 2
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.1"
    assert cri["cni"]["bin_dir"] == "/opt/cni/bin"
    runtimes = cri["containerd"]["runtimes"]
    assert runtimes["runc"]["options"] == {"SystemdCgroup": True}
    if nvidia:
        assert cri["containerd"]["default_runtime_name"] == "nvidia"
        assert runtimes["nvidia"]["options"] == {
            "BinaryName": "/usr/bin/nvidia-container-runtime",
            "SystemdCgroup": True,
        }
    else:
        assert cri["containerd"]["default_runtime_name"] == "runc"
        assert "nvidia" not in runtimes


# --- the artifact -----------------------------------------------------------------------------


def test_collection_builds_a_clean_artifact_that_installs_offline(tmp_path: Path) -> None:
    """The tarball holds the roles, playbooks, inventories and the GitOps bundle (charts/,
    argocd/, workflows/), none of the Python platform, its tests or any cache; it installs
    without Galaxy (every dependency ships with the `ansible` package) and its playbooks load."""
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    done = ansible_env.run(
        ["ansible-galaxy", "collection", "build", "--output-path", str(tmp_path), str(ROOT)]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tarball = tmp_path / f"uplion-platform-{galaxy['version']}.tar.gz"
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
        manifest = json.load(archive.extractfile("MANIFEST.json"))  # type: ignore[arg-type]

    assert manifest["collection_info"]["dependencies"] == galaxy["dependencies"]
    required = {
        "MANIFEST.json",
        "FILES.json",
        "README.md",
        "meta/runtime.yml",
        "changelogs/changelog.yaml",
        "charts/uplion/Chart.yaml",
        "charts/uplion-model/Chart.yaml",
    }
    required |= {f"playbooks/{name}.yml" for name in PLAYBOOK_NAMES}
    required |= {f"inventories/{name}/hosts.yml" for name in EXAMPLE_INVENTORIES}
    for role in ansible_env.roles():
        required |= {
            f"roles/{role}/{path}"
            for path in (
                "README.md",
                "tasks/main.yml",
                "defaults/main.yml",
                "meta/argument_specs.yml",
            )
        }
    assert required <= names, sorted(required - names)
    for folder in ("argocd", "workflows"):
        if (ROOT / folder).is_dir():
            assert any(
                name.startswith(f"{folder}/") and name.endswith(".yaml") for name in names
            ), folder
    forbidden = (
        "src/",
        "tests/",
        "bench/",
        "docs/",
        "molecule/",
        ".venv/",
        ".cache/",
        ".git/",
        ".ansible/",
        ".ci/",
    )
    assert [
        name
        for name in names
        if name.startswith(forbidden) or name.rstrip("/") in {n.rstrip("/") for n in forbidden}
    ] == []
    assert names.isdisjoint(
        {"pyproject.toml", "Makefile", "Dockerfile", ".gitignore", ".yamllint", ".ansible-lint"}
    )
    assert [name for name in names if "__pycache__" in name or name.endswith(".pyc")] == []

    installed = tmp_path / "installed"
    env = {**ansible_env.environment(), "ANSIBLE_COLLECTIONS_PATH": str(installed)}
    done = ansible_env.run(
        [
            "ansible-galaxy",
            "collection",
            "install",
            "--offline",
            "-p",
            str(installed),
            str(tarball),
        ],
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    done = ansible_env.run(
        [
            "ansible-playbook",
            "--syntax-check",
            "-i",
            str(INVENTORIES / "baremetal"),
            "uplion.platform.site",
            "uplion.platform.destroy",
        ],
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        str(installed / "ansible_collections" / "uplion" / "platform" / "playbooks" / "site.yml")
        in done.stdout
    )


ADDON_NAMES = {"metrics_server": "metrics-server", "gpu_operator": "GPU operator", "keda": "KEDA",
               "istio": "Istio", "cert_manager": "cert-manager", "monitoring": "monitoring stack",
               "pulsar": "Pulsar", "argocd": "Argo CD", "argo_workflows": "Argo Workflows"}


def test_the_galaxy_description_names_every_add_on() -> None:
    plays = yaml.safe_load((PLAYBOOKS / "addons.yml").read_text())
    roles = [r["role"].removeprefix("uplion.platform.") for play in plays
             for r in play.get("roles", [])]
    assert set(roles) == set(ADDON_NAMES)
    description = " ".join(yaml.safe_load((ROOT / "galaxy.yml").read_text())["description"].split())
    assert [name for name in ADDON_NAMES.values() if name not in description] == []

"""How the bundle tests run Ansible's tools: the .venv's binaries, and this checkout as the
collection ``uplion.platform``.

The repository root is the collection root; Ansible finds collections only under
``<path>/ansible_collections/<namespace>/<name>``, so a symlink in
``.cache/collections`` (the same one molecule's shared create step makes) points back at it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COLLECTIONS = ROOT / ".cache" / "collections"
ROLES = ROOT / "roles"
PLAYBOOKS = ROOT / "playbooks"
INVENTORIES = ROOT / "inventories"


@functools.cache
def environment() -> dict[str, str]:
    """The environment Ansible's tools run in: the collection linked in, no colours."""
    link = COLLECTIONS / "ansible_collections" / "uplion" / "platform"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(Path("..", "..", "..", ".."))
    assert link.resolve() == ROOT, f"{link} points at {link.resolve()}, not {ROOT}"
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PY_COLORS="0",
    )
    return env


def run(
    command: Sequence[str], *, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one of the .venv's Ansible tools (from the repository root) with the collection's
    environment, or with ``env`` where given."""
    argv = [str(VENV_BIN / command[0]), *command[1:]]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=environment() if env is None else env,
        timeout=timeout,
    )


def roles() -> list[str]:
    """Every role of the collection."""
    return sorted(path.name for path in ROLES.iterdir() if (path / "tasks").is_dir())


# Importing Ansible patches interpreter built-ins (``sys.intern``) for the whole process, which
# later breaks torch's compiler in the same test session: Ansible's own code runs in a child.
_VALIDATE = """
import json, sys
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
options, values = json.load(sys.stdin)
print(json.dumps(ArgumentSpecValidator(options).validate(values).error_messages))
"""


def argument_errors(options: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """What Ansible's argument spec validator says of ``values`` under ``options``."""
    done = subprocess.run(
        [sys.executable, "-c", _VALIDATE], input=json.dumps([options, values]),
        capture_output=True, text=True, check=True, timeout=60,
    )
    errors: list[str] = json.loads(done.stdout)
    return errors

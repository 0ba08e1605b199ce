"""A helm-docs style values table from a chart's values.yaml ``# --`` comments.

``python -m tests.bundle.values_docs charts/uplion`` rewrites the table in the chart's README.md
(between the ``<!-- values -->`` markers); the tests check that it has not drifted.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):")


def _lookup(values: dict[str, Any], path: list[str]) -> Any:
    node: Any = values
    for part in path:
        node = node[part]
    return node


def rows(values_file: Path) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every key documented with ``# --``."""
    text = values_file.read_text()
    values = yaml.safe_load(text)
    found: list[tuple[str, str, str, str]] = []
    stack: list[str] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if comment and stripped.startswith("#"):
            comment.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if not match:
            comment = []
            continue
        depth = len(match["indent"]) // 2
        stack[depth:] = [match["key"]]
        if comment:
            text_ = " ".join(comment)
            default_note = re.search(r"@default -- (.*)$", text_)
            value = _lookup(values, stack)
            default = (default_note[1] if default_note
                       else f"`{json.dumps(value, separators=(',', ':'))}`")
            description = re.sub(r"\s*@default -- .*$", "", text_)
            found.append((".".join(stack), type(value).__name__.replace("NoneType", "null"),
                          default, description))
        comment = []
    return found


def table(values_file: Path) -> str:
    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for key, kind, default, description in rows(values_file):
        cell = default.replace("|", "\\|")
        text_ = description.replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | {cell} | {text_} |")
    return "\n".join(lines)


def render_readme(chart: Path) -> str:
    readme = (chart / "README.md").read_text()
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table(chart / 'values.yaml')}\n{END}{tail}"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        chart = Path(name)
        (chart / "README.md").write_text(render_readme(chart))

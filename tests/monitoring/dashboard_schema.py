"""What a Grafana dashboard JSON must hold to import and render (Grafana's dashboard model,
schemaVersion 39): the fields Grafana requires and those uplion's dashboards promise (a
description and a unit on every panel, the Prometheus data source chosen by a variable)."""

from __future__ import annotations

from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

_DATASOURCE_REF: dict[str, Any] = {
    "type": "object", "required": ["type", "uid"],
    "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
}

_TARGET: dict[str, Any] = {
    "type": "object", "required": ["refId", "expr", "datasource"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]$"},
        "expr": {"type": "string", "minLength": 1},
        "legendFormat": {"type": "string"},
        "datasource": _DATASOURCE_REF,
    },
}

_PANEL: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "title", "description", "datasource", "gridPos", "fieldConfig",
                 "targets"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"enum": ["timeseries", "stat", "table", "gauge", "bargauge"]},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 20},
        "datasource": _DATASOURCE_REF,
        "gridPos": {
            "type": "object", "required": ["x", "y", "w", "h"],
            "properties": {
                "x": {"type": "integer", "minimum": 0, "maximum": 23},
                "y": {"type": "integer", "minimum": 0},
                "w": {"type": "integer", "minimum": 1, "maximum": 24},
                "h": {"type": "integer", "minimum": 1},
            },
        },
        "fieldConfig": {
            "type": "object", "required": ["defaults", "overrides"],
            "properties": {
                "defaults": {"type": "object", "required": ["unit"],
                             "properties": {"unit": {"type": "string", "minLength": 1}}},
                "overrides": {"type": "array"},
            },
        },
        "targets": {"type": "array", "minItems": 1, "items": _TARGET},
    },
}

_VARIABLE: dict[str, Any] = {
    "type": "object", "required": ["name", "type"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z_]+$"},
        "type": {"enum": ["datasource", "query", "custom", "interval", "constant"]},
    },
    "allOf": [
        {"if": {"properties": {"type": {"const": "datasource"}}},
         "then": {"properties": {"query": {"const": "prometheus"}}, "required": ["query"]}},
        {"if": {"properties": {"type": {"const": "query"}}},
         "then": {"required": ["datasource", "query"],
                  "properties": {"datasource": _DATASOURCE_REF}}},
    ],
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["uid", "title", "description", "tags", "schemaVersion", "time", "templating",
                 "panels", "editable", "annotations"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{8,40}$"},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "tags": {"type": "array", "contains": {"const": "uplion"}},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "time": {"type": "object", "required": ["from", "to"]},
        "refresh": {"type": "string"},
        "editable": {"type": "boolean"},
        "annotations": {"type": "object", "required": ["list"]},
        "templating": {
            "type": "object", "required": ["list"],
            "properties": {"list": {
                "type": "array", "items": _VARIABLE,
                "contains": {"properties": {"name": {"const": "datasource"},
                                            "type": {"const": "datasource"}}},
            }},
        },
        "panels": {"type": "array", "minItems": 1, "items": _PANEL},
    },
}

"""The Kubernetes operator: ``AIModel`` resources become worker Deployments scaled by KEDA.

``manifests`` builds every object the operator applies, as plain dicts from pure functions.
"""

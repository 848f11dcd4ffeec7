"""Shared fixtures: the real peers (Kubernetes, OIDC issuers, slapd) and the MockHub."""

from __future__ import annotations

from testbed.k8s import k8s_cluster

__all__ = ["k8s_cluster"]

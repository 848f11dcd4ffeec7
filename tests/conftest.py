"""Shared fixtures: the real peers (Kubernetes, OIDC issuers, slapd) and the MockHub."""

from __future__ import annotations

from testbed.hub import af_hub
from testbed.k8s import k8s_api, k8s_cluster
from testbed.krb5.fixtures import krb5_testbed, krb5_testbed_factory
from testbed.ldap.fixtures import ldap_testbed, ldap_testbed_factory
from testbed.oidc.fixtures import oidc_testbed
from testbed.podstub import pod_stub

__all__ = [
    "af_hub",
    "k8s_api",
    "k8s_cluster",
    "krb5_testbed",
    "krb5_testbed_factory",
    "ldap_testbed",
    "ldap_testbed_factory",
    "oidc_testbed",
    "pod_stub",
]

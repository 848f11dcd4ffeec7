"""Service tokens (afauth.exchange) reach the servers: one file per service in
``$AF_TOKENS_DIR`` — a Secret mounted as a directory (Kubernetes), a private folder of 0600 files
(local backend) — and follow the auth_state."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from afspawner import credentials
from afspawner.backends.base import LaunchFailed
from afspawner.backends.local import _rewrite_services, _write_services
from afspawner.manifests import make_objects, services_secret
from unit.test_manifests import PLAN, SETTINGS


def state(**services: Any) -> dict[str, Any]:
    return {"access_token": "AT", "service_tokens": services}


def test_services_of_an_auth_state() -> None:
    found = credentials.services_of(
        state(
            rucio={"access_token": "R", "error": None},
            eos={"access_token": None, "error": "invalid_target"},
            **{"../etc": {"access_token": "X"}, "Bad": {"access_token": "X"}},
        )
    )
    assert found == {"rucio": "R", "eos": ""}  # names that are not service names are dropped
    revoked = {**state(rucio={"access_token": "R"}), "access_token": None}
    assert credentials.services_of(revoked) == {}
    assert credentials.services_of({"access_token": "AT"}) == {}
    encoded = credentials.encode_services(found)
    assert credentials.decode_services(encoded) == found
    assert credentials.encode_services({}) == "" and credentials.decode_services("") == {}


async def test_sync_rewrites_only_on_change_and_removes_on_revocation() -> None:
    calls: list[dict[str, str]] = []

    async def update(st: Any, tokens: Any) -> None:
        calls.append(dict(tokens))

    saved: dict[str, Any] = {}
    log = logging.getLogger("test")
    await credentials.sync_services(saved, {"rucio": "R1"}, update, log, "srv")
    await credentials.sync_services(saved, {"rucio": "R1"}, update, log, "srv")
    await credentials.sync_services(saved, {"rucio": "R2", "eos": ""}, update, log, "srv")
    await credentials.sync_services(saved, {}, update, log, "srv")
    assert calls == [{"rucio": "R1"}, {"rucio": "R2", "eos": ""}, {}]
    assert saved["services_sha"] == ""
    assert "R2" not in str(saved)


def test_kubernetes_services_secret_is_mounted_as_a_directory() -> None:
    objs = make_objects(PLAN, SETTINGS, "tok", service_tokens={"rucio": "R-tok", "eos": ""})
    secret, pod = objs.services_secret, objs.pod
    assert secret is not None
    assert secret["metadata"]["name"] == "jupyter-o-27brien--gpu1-services"
    assert secret["stringData"] == {"rucio": "R-tok"}  # no key, no file for a failed exchange
    assert "R-tok" not in str(pod) and "R-tok" not in str(objs.secret)
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["af-services"]["secret"] == {
        "secretName": "jupyter-o-27brien--gpu1-services",
        "defaultMode": 0o440,
    }
    [c] = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["AF_TOKENS_DIR"] == "/etc/af-tokens"
    assert env["BEARER_TOKEN_FILE"] == "/etc/af-token/bearer_token"
    mount = {"name": "af-services", "mountPath": "/etc/af-tokens", "readOnly": True}
    assert mount in c["volumeMounts"]
    assert make_objects(PLAN, SETTINGS, "tok").services_secret is None
    renewed = services_secret("p-services", "ns", {"a": "b"}, {}, None)
    assert renewed["stringData"] == {} and renewed["metadata"]["name"] == "p-services"


def test_local_service_files_are_private_and_follow_the_tokens(tmp_path: Path) -> None:
    folder = tmp_path / ".af-tokens"
    _write_services(folder, {"rucio": "R1", "eos": ""}, None)
    assert sorted(os.listdir(folder)) == ["rucio"]
    assert (folder / "rucio").read_text() == "R1"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "rucio").stat().st_mode & 0o777 == 0o600
    _rewrite_services(folder, {"rucio": "R2", "eos": "E2"})
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"rucio": "R2", "eos": "E2"}
    _rewrite_services(folder, {"rucio": "R3"})  # eos no longer given: its file goes
    assert sorted(os.listdir(folder)) == ["rucio"]
    _rewrite_services(folder, {})  # revoked
    assert os.listdir(folder) == []


def test_local_service_folder_through_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".af-tokens").symlink_to(elsewhere)
    with pytest.raises(LaunchFailed):
        _write_services(tmp_path / "home" / ".af-tokens", {"rucio": "R"}, None)
    assert os.listdir(elsewhere) == []

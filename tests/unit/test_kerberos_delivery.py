"""The credential cache reaches the user's servers: a Secret mounted read-only with
KRB5CCNAME (Kubernetes), a private file owned by the user (local backend), never through a link
left in the user's directory."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from afspawner import credentials
from afspawner.backends.local import _rewrite_token, _write_token
from afspawner.manifests import krb5_secret, make_objects
from afspawner.spawner import AFSpawner
from unit.test_manifests import PLAN, SETTINGS

CCACHE = b"\x05\x04\x00\x0c" + bytes(range(256))  # binary: not valid UTF-8


def test_ccache_is_a_read_only_file_from_its_own_secret() -> None:
    objs = make_objects(PLAN, SETTINGS, bearer_token="tok", krb5_ccache=CCACHE)
    pod, secret = objs.pod, objs.krb5_secret
    assert secret is not None and objs.token_secret is not None
    assert secret["metadata"]["name"] == "jupyter-o-27brien--gpu1-krb5"
    assert secret["metadata"]["labels"] == objs.token_secret["metadata"]["labels"]
    assert base64.b64decode(secret["data"]["krb5cc"]) == CCACHE
    assert "stringData" not in secret
    encoded = secret["data"]["krb5cc"]
    assert encoded not in str(pod) and encoded not in str(objs.secret)
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["af-krb5"]["secret"] == {
        "secretName": "jupyter-o-27brien--gpu1-krb5",
        "defaultMode": 0o440,
        "items": [{"key": "krb5cc", "path": "krb5cc"}],
    }
    [c] = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["KRB5CCNAME"] == "FILE:/etc/af-krb5/krb5cc"
    assert env["BEARER_TOKEN_FILE"] == "/etc/af-token/bearer_token"
    assert {"name": "af-krb5", "mountPath": "/etc/af-krb5", "readOnly": True} in c["volumeMounts"]
    assert make_objects(PLAN, SETTINGS).krb5_secret is None


def test_renewed_secret_has_the_same_shape() -> None:
    s = krb5_secret("p-krb5", "ns", {"a": "b"}, b"new", {"x": "y"})
    assert s["data"] == {"krb5cc": base64.b64encode(b"new").decode()}
    assert s["metadata"] == {
        "name": "p-krb5",
        "namespace": "ns",
        "labels": {"a": "b"},
        "annotations": {"x": "y"},
    }


def test_local_ccache_file_is_private_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / ".af-krb5cc"
    _write_token(path, CCACHE, None)
    assert path.read_bytes() == CCACHE
    assert path.stat().st_mode & 0o777 == 0o600
    _rewrite_token(path, b"renewed")
    assert path.read_bytes() == b"renewed" and path.stat().st_mode & 0o777 == 0o600
    _rewrite_token(path, b"")
    assert not path.exists()


def test_a_link_left_in_the_users_directory_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".af-krb5cc.tmp").symlink_to(victim)
    _write_token(home / ".af-krb5cc", CCACHE, None)
    assert victim.read_text() == "do not touch"
    assert (home / ".af-krb5cc").read_bytes() == CCACHE
    assert not (home / ".af-krb5cc").is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_as_root_the_file_belongs_to_the_user(tmp_path: Path) -> None:
    path = tmp_path / ".af-krb5cc"
    _write_token(path, CCACHE, (50001, 5063))
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (50001, 5063, 0o600)


def test_the_spawner_reads_the_ccache_of_auth_state() -> None:
    spawner = AFSpawner()
    encoded = base64.b64encode(CCACHE).decode()
    assert spawner._ccache({"kerberos": {"ccache": encoded}}) == CCACHE
    assert spawner._ccache({"kerberos": {"ccache": None, "error": "no ticket"}}) is None
    assert spawner._ccache({"kerberos": {"ccache": "%%%"}}) is None
    assert spawner._ccache({}) is None
    spawner.pass_kerberos_ticket = False
    assert spawner._ccache({"kerberos": {"ccache": encoded}}) is None


async def test_a_credential_is_rewritten_once_and_retried_after_a_failure() -> None:
    calls: list[bytes] = []
    failing = [True]

    async def update(state: Mapping[str, Any], value: bytes) -> None:
        calls.append(value)
        if failing[0]:
            raise OSError("disk full")

    state: dict[str, Any] = {"ccache_sha": credentials.digest(b"old")}
    log = logging.getLogger("test")
    await credentials.sync(state, "ccache_sha", b"old", update, log, "ticket")
    assert calls == []  # the server has it
    await credentials.sync(state, "ccache_sha", b"new", update, log, "ticket")
    assert calls == [b"new"] and state["ccache_sha"] == credentials.digest(b"old")  # retried
    failing[0] = False
    await credentials.sync(state, "ccache_sha", b"new", update, log, "ticket")
    assert state["ccache_sha"] == credentials.digest(b"new")
    await credentials.sync(state, "ccache_sha", b"", update, log, "ticket")
    assert calls[-1] == b"" and state["ccache_sha"] == ""

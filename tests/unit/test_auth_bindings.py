"""The (idp, subject) ↔ hub name binding store (SQLite file, survives restarts)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from afauth.bindings import BindingStore, main


async def test_first_claim_wins_and_survives_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "state" / "afauth-bindings.sqlite"
    store = BindingStore(path)
    first = await store.claim("alice", "cern", "alice")
    assert first.owns("cern", "alice")
    second = await store.claim("alice", "iam", "5f0e")
    assert second == first and not second.owns("iam", "5f0e")
    reopened = BindingStore(path)  # e.g. after a hub restart
    assert await reopened.get("alice") == first
    assert [b.username for b in await reopened.find("cern", "alice")] == ["alice"]
    assert await reopened.find("iam", "5f0e") == []
    assert await reopened.get("nobody") is None


async def test_concurrent_claims_bind_exactly_one_identity(tmp_path: Path) -> None:
    store = BindingStore(tmp_path / "b.sqlite")
    results = await asyncio.gather(
        *(store.claim("carol", "idp", f"subject-{i}") for i in range(16))
    )
    owners = {(b.idp, b.subject) for b in results}
    assert len(owners) == 1


def test_cli_lists_and_releases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "b.sqlite")
    store = BindingStore(db)
    store.claim_sync("alice", "cern", "alice")
    store.claim_sync("bob", "fnal", "bob")
    assert main(["--db", db, "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:3] for line in out] == [
        ["alice", "cern", "alice"],
        ["bob", "fnal", "bob"],
    ]
    assert main(["--db", db, "unbind", "alice"]) == 0
    assert main(["--db", db, "unbind", "alice"]) == 1
    assert store.get_sync("alice") is None
    assert store.claim_sync("alice", "iam", "x").owns("iam", "x")

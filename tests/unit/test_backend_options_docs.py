"""Backend options: declared once (type, default, help), checked from it, documented from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from afspawner.backends.kube_settings import KubeSettings, docs_table
from afspawner.backends.kubernetes import KubeSettings as FromBackend
from afspawner.backends.kubernetes import settings_from_options
from afspawner.backends.local import LocalBackend, LocalSettings, local_docs_table
from afspawner.backends.options import declared, option, options_table, settings_from

SPAWNER_DOC = Path(__file__).resolve().parents[2] / "docs" / "spawner.md"


def doc_table(heading: str) -> str:
    text = SPAWNER_DOC.read_text(encoding="utf-8")
    start = text.index("| key |", text.index(heading))
    return text[start : text.index("\n\n", start) + 1]


@pytest.mark.parametrize(
    ("heading", "table"),
    [
        ("### Kubernetes backend options", docs_table),
        ("### Local backend options", local_docs_table),
    ],
)
def test_the_docs_tables_are_the_declared_options(heading: str, table: Any) -> None:
    assert doc_table(heading) == table(), (
        f"docs/spawner.md '{heading}' differs from the declaration; paste:\n{table()}"
    )


def test_the_old_import_path_still_works() -> None:
    assert FromBackend is KubeSettings


def test_defaults_are_the_declared_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert settings_from_options({}) == KubeSettings()
    s = settings_from_options({})
    assert (s.namespace, s.image_pull_policy, s.unschedulable_grace) == (
        "default",
        "IfNotPresent",
        20.0,
    )
    assert (s.reconcile_quotas, s.watch_nodes, dict(s.extra_labels)) == (True, True, {})
    monkeypatch.setenv("POD_NAMESPACE", "jhub")
    assert settings_from_options({}).namespace == "jhub"
    assert settings_from_options({"namespace": "mine"}).namespace == "mine"
    assert settings_from_options({"namespace": None}).namespace == "jhub"


def test_values_are_converted() -> None:
    s = settings_from_options(
        {
            "kubeconfig": "/etc/kube.conf",
            "unschedulable_grace": 5,
            "sweep_interval": 2,
            "extra_labels": {"team": "af"},
            "watch_nodes": False,
            "image_pull_policy": "Always",
        }
    )
    assert s.kubeconfig == "/etc/kube.conf" and s.unschedulable_grace == 5.0
    assert isinstance(s.sweep_interval, float) and s.extra_labels == {"team": "af"}
    assert s.watch_nodes is False and s.image_pull_policy == "Always"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"nmespace": "x"}, "nmespace: unknown option of the kubernetes backend; allowed: "),
        ({"namespace": 3}, "namespace: wrong type int; expected a string"),
        ({"namespace": ""}, "namespace: must not be empty"),
        ({"watch_nodes": "yes"}, "watch_nodes: wrong type str; expected true or false"),
        ({"unschedulable_grace": True}, "unschedulable_grace: wrong type bool"),
        ({"unschedulable_grace": -1}, "unschedulable_grace: seconds, 0 or more"),
        ({"sweep_grace": 0}, "sweep_grace: seconds, more than 0"),
        ({"image_pull_policy": "Sometimes"}, "Always, IfNotPresent or Never; got 'Sometimes'"),
        ({"extra_labels": {"a": 1}}, "extra_labels: wrong type dict; expected a mapping"),
        ({"extra_labels": ["a"]}, "extra_labels: wrong type list"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=r"^c\.AFSpawner\.backend_options\.") as info:
        settings_from_options(options)
    assert error in str(info.value)


def test_local_backend_options(tmp_path: Path) -> None:
    backend = LocalBackend.create(None, {"root_dir": str(tmp_path), "ip": "127.0.0.2"})
    assert isinstance(backend, LocalBackend)
    assert backend.settings == LocalSettings(tmp_path, False, "127.0.0.2")
    assert LocalBackend.create(None, {"root_dir": tmp_path}).settings.root_dir == tmp_path
    with pytest.raises(ValueError, match="run_as_hub_user: wrong type str"):
        LocalBackend.create(None, {"run_as_hub_user": "yes"})
    with pytest.raises(ValueError, match="unknown option of the local backend; allowed: ip, "):
        LocalBackend.create(None, {"namespace": "x"})


def test_every_field_is_declared_with_help() -> None:
    for cls in (KubeSettings, LocalSettings):
        names = [f.name for f in dataclasses.fields(cls)]
        assert [o.name for o in declared(cls)] == names
        assert all(o.doc.help for o in declared(cls))


def test_a_site_backend_can_declare_its_options_the_same_way() -> None:
    @dataclasses.dataclass(frozen=True)
    class Mine:
        queue: str = option("default", "batch queue", choices=("default", "gpu"))
        labels: Mapping[str, str] = option({}, "labels")
        timeout: float = option(60.0, "seconds", positive=True, unit="seconds")

    assert settings_from(Mine, {"queue": "gpu"}, "mine") == Mine("gpu")
    with pytest.raises(ValueError, match="unknown option of the mine backend"):
        settings_from(Mine, {"x": 1}, "mine")
    assert "| `timeout` | number (seconds) | `60` | seconds |" in options_table(Mine)

    @dataclasses.dataclass(frozen=True)
    class Undeclared:
        plain: int = 3

    with pytest.raises(TypeError, match="not declared with option"):
        declared(Undeclared)

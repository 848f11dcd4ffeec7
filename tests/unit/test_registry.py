"""Entry-point plugins: built-ins, the sample site plugin, and clear errors for broken ones."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from afcore.registry import PluginError, Registry
from afspawner.loader import FacilityError, load_facility
from afspawner.volumes import GROUP as VOLUME_GROUP
from afspawner.volumes import VolumeType, volume_types


def _registry(*eps: EntryPoint) -> Registry[type[VolumeType]]:
    return Registry(
        VOLUME_GROUP,
        "volume type",
        lambda o: isinstance(o, type) and issubclass(o, VolumeType),
        eps,
    )


def test_builtin_volume_types_are_entry_points() -> None:
    names = volume_types().names()
    for builtin in ("cvmfs", "cephfs", "eos", "home", "hostpath"):
        assert builtin in names
    assert volume_types().load("cvmfs").forced_read_only


def test_sample_site_plugin_is_discovered_and_validates() -> None:
    """examples/site-plugin is installed by the test command; its type is usable in a facility."""
    scratch = volume_types().load("scratch")
    assert scratch.__module__ == "af_site_example.volumes"
    base = {
        "flavors": [{"name": "f", "image": "i", "cpu": 1, "memory": "1Gi", "volumes": ["scratch"]}]
    }
    ok = {
        **base,
        "volumes": {
            "scratch": {
                "type": "scratch",
                "mount": "/scratch",
                "host_path": "/mnt/nvme",
                "size": "100Gi",
            }
        },
    }
    assert load_facility(ok).volumes["scratch"].options["size"] == "100Gi"
    bad = {**base, "volumes": {"scratch": {"type": "scratch", "mount": "/scratch"}}}
    with pytest.raises(FacilityError, match=r"volumes\.scratch\.host_path: required"):
        load_facility(bad)


def test_unknown_plugin_lists_installed() -> None:
    reg = _registry(EntryPoint("cvmfs", "afspawner.volumes.builtin:CVMFS", VOLUME_GROUP))
    with pytest.raises(PluginError, match="unknown volume type 'nfs'; installed: cvmfs"):
        reg.load("nfs")


def test_plugin_that_fails_to_import_is_named() -> None:
    reg = _registry(EntryPoint("broken", "af_no_such_module:Thing", VOLUME_GROUP))
    with pytest.raises(PluginError) as info:
        reg.load("broken")
    message = str(info.value)
    assert "volume type plugin 'broken'" in message
    assert "af_no_such_module:Thing" in message
    assert "ModuleNotFoundError" in message


def test_plugin_of_the_wrong_kind_is_refused() -> None:
    reg = _registry(EntryPoint("odd", "os.path:join", VOLUME_GROUP))
    with pytest.raises(PluginError, match="is not a valid volume type"):
        reg.load("odd")


def test_conflicting_declarations_are_refused() -> None:
    reg = _registry(
        EntryPoint("x", "afspawner.volumes.builtin:EOS", VOLUME_GROUP),
        EntryPoint("x", "afspawner.volumes.builtin:Home", VOLUME_GROUP),
    )
    with pytest.raises(PluginError, match="declared more than once"):
        reg.load("x")


def test_loaded_plugins_are_cached() -> None:
    reg = _registry(EntryPoint("eos", "afspawner.volumes.builtin:EOS", VOLUME_GROUP))
    assert reg.load("eos") is reg.load("eos")


def test_jupyterhub_finds_af_classes() -> None:
    from importlib.metadata import entry_points

    spawners = {ep.name: ep.value for ep in entry_points(group="jupyterhub.spawners")}
    authenticators = {ep.name: ep.value for ep in entry_points(group="jupyterhub.authenticators")}
    assert spawners["af"] == "afspawner.spawner:AFSpawner"
    assert authenticators["af"] == "afauth.authenticator:AFAuthenticator"

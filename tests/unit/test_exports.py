"""Top-level exports: `from afspawner import AFSpawner`, `from afauth import AFAuthenticator`."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest


def test_the_classes_are_exported_at_the_top() -> None:
    from afauth import AFAuthenticator
    from afauth.authenticator import AFAuthenticator as Deep
    from afspawner import AFSpawner
    from afspawner.spawner import AFSpawner as DeepSpawner

    assert AFSpawner is DeepSpawner and AFAuthenticator is Deep
    import afauth
    import afspawner

    assert afspawner.__all__ == ["AFSpawner"] and afauth.__all__ == ["AFAuthenticator"]
    assert "AFSpawner" in dir(afspawner) and "AFAuthenticator" in dir(afauth)


def test_the_entry_points_name_the_same_classes() -> None:
    from afauth import AFAuthenticator
    from afspawner import AFSpawner

    spawners = {ep.name: ep for ep in entry_points(group="jupyterhub.spawners")}
    authenticators = {ep.name: ep for ep in entry_points(group="jupyterhub.authenticators")}
    assert spawners["af"].load() is AFSpawner
    assert authenticators["af"].load() is AFAuthenticator


@pytest.mark.parametrize("package", ["afspawner", "afauth"])
def test_unknown_names_are_attribute_errors(package: str) -> None:
    module = __import__(package)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        module.Nope  # noqa: B018
    with pytest.raises(ImportError):
        exec(f"from {package} import Nope")  # noqa: S102


def test_pure_modules_do_not_load_jupyterhub() -> None:
    """The export is lazy: the CLI's and policy's imports stay light."""
    code = (
        "import sys, afspawner, afspawner.policy, afspawner.cli, afauth, afauth.mapping\n"
        "print('jupyterhub' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr

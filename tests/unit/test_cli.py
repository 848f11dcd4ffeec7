"""``afhub check``: exit 0 with a summary, exit 2 with every error."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from afspawner.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "facilities" / "ucsd-cms.yaml"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_check_valid_file_summarises() -> None:
    code, out, err = run("check", str(EXAMPLE))
    assert code == 0, err
    assert "UCSD CMS analysis facility: 2 VO(s), 5 flavor(s), 2 GPU class(es), 3 volume(s)" in out
    assert "cms [namespace af-cms]: total cpu 400, memory 1.56Ti, servers 200" in out
    assert "flavors: cms-el9, cms-el9-large, general-purpose, ml-gpu-t4, ml-gpu-a100" in out
    assert "t4: nvidia.com/gpu (whole) on nvidia.com/gpu.product=Tesla-T4" in out
    assert "cvmfs: cvmfs at /cvmfs (read-only)" in out
    assert len(out.splitlines()) <= 25  # one screen


def test_check_broken_file_lists_every_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "vos: {cms: {quota: {cpu: lots}}}\n"
        "flavors:\n"
        "  - {name: a, image: i, cpu: 1, memory: 8GG, gpu: {class: v100}}\n"
    )
    code, out, err = run("check", str(broken))
    assert code == 2
    assert out == ""
    assert f"{broken}: 3 error(s)" in err
    assert "vos.cms.quota.cpu: 'lots' is not a Kubernetes quantity" in err
    assert "flavors[0].memory: '8GG' is not a Kubernetes quantity" in err
    assert "flavors[0].gpu.class: unknown GPU class 'v100'; defined: none" in err


def test_console_script_is_installed(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "afhub"
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run(
        [str(exe), "check", str(missing)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr


def test_render_prints_the_objects_of_a_gpu_server() -> None:
    import yaml

    code, out, err = run(
        "render",
        str(EXAMPLE),
        "--user",
        "alice",
        "--groups",
        "cms,gpu-approved",
        "--flavor",
        "ml-gpu-t4",
        "--uid",
        "50001",
        "--gid",
        "5063",
        "--server",
        "ml",
    )
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Secret", "Pod"]
    pod = docs[-1]
    assert pod["metadata"]["name"] == "jupyter-alice--ml"
    assert pod["metadata"]["namespace"] == "af-cms"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4"}
    assert pod["spec"]["securityContext"]["runAsUser"] == 50001
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_render_refusal_exits_2_with_the_reason() -> None:
    ids = ("--uid", "50002", "--gid", "5063")
    code, out, err = run(
        "render", str(EXAMPLE), "--user", "bob", "--groups", "cms", "--flavor", "ml-gpu-t4", *ids
    )
    assert code == 2 and out == ""
    assert "refused (403): NVIDIA T4 GPUs require approval (group gpu-approved)" in err
    code, _, err = run(
        "render", str(EXAMPLE), "--user", "bob", "--groups", "cms", "--flavor", "nope", *ids
    )
    assert code == 2 and "refused (400): unknown flavor 'nope'" in err


def test_render_applies_allow_root_like_the_spawner() -> None:
    import yaml

    argv = ["render", str(EXAMPLE), "--user", "root", "--groups", "cms", "--flavor", "cms-el9"]
    code, _, err = run(*argv, "--uid", "0", "--gid", "0")
    assert code == 2 and "refused (403): refusing to run a server as uid/gid 0" in err
    code, out, err = run(*argv, "--uid", "0", "--gid", "0", "--allow-root")
    assert code == 0, err
    pod = list(yaml.safe_load_all(out))[-1]
    assert pod["spec"]["securityContext"]["runAsUser"] == 0
    assert "runAsNonRoot" not in pod["spec"]["securityContext"]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["AF_VO"] == "cms" and env["NB_UID"] == "0"


def test_render_without_a_known_uid_is_refused_like_the_spawner(tmp_path: Path) -> None:
    argv = ["render", str(EXAMPLE), "--user", "carol", "--groups", "cms", "--flavor", "cms-el9"]
    code, out, err = run(*argv)
    assert code == 2 and out == ""
    assert "refused (403): no POSIX account is known for 'carol'" in err
    code, _, err = run(*argv, "--uid", "50003")
    assert code == 2 and "give both --uid and --gid" in err
    uid_map = tmp_path / "uids.yaml"
    uid_map.write_text("carol: {uid: 50003, gid: 5063}\n")
    code, out, err = run(*argv, "--uid-map", str(uid_map))
    assert code == 0, err
    import yaml

    pod = list(yaml.safe_load_all(out))[-1]
    assert pod["spec"]["securityContext"]["runAsUser"] == 50003
    code, _, err = run(*argv, "--uid-map", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read --uid-map" in err

"""The TrainJob run with Docker (tuna.train.docker_job), its pure parts: what the Trainer MPI plugin would add (hostfile,
SSH Secret files, launcher env), and the containers' commands taken from the rendered objects. No engine runs here;
tests/containers/test_trainjob_docker.py runs the job for real."""

from __future__ import annotations

import copy
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from support import CONFIGS, SMOKE
from tuna.recipe import load_recipe
from tuna.train import docker_job as dj
from tuna.train import jobs
from tuna.train.docker_job import DockerJobError

TWO_NODES = ("cluster.num_nodes=2", "train.ranks=1")


def render(recipe: Path = SMOKE, overrides: tuple[str, ...] = TWO_NODES, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = load_recipe(recipe, list(overrides))
    obj = jobs.render_trainjob(cfg, 1, "tuna", list(overrides), recipe=recipe, name="tj", **kw)
    return obj, jobs.render_runtime(cfg)


def containers(obj: dict[str, Any], runtime: dict[str, Any], **kw: Any) -> dict[str, dj.Container]:
    return {c.name: c for c in dj.plan(obj, runtime, ssh_dir="/keys", hostfile_dir="/mpi", cores=2, **kw)}


def test_hostfile_lists_node_pods_then_the_launcher_with_their_slots() -> None:
    """The plugin writes '<pod endpoint> slots=<numProcPerNode>' per node pod, in the runtime's replicated-job order
    (node, launcher); with runLauncherAsNode the launcher is a node and numNodes - 1 node pods remain."""
    obj, runtime = render()
    assert dj.hostfile(obj, runtime) == "tj-node-0-0.tj slots=1\ntj-launcher-0-0.tj slots=1\n"
    obj, runtime = render(CONFIGS / "llava7b.yaml", ())  # 4 nodes x 8 GPUs
    assert dj.hostfile(obj, runtime).splitlines() == [*(f"tj-node-0-{i}.tj slots=8" for i in range(3)),
                                                      "tj-launcher-0-0.tj slots=8"]
    single, runtime = render(overrides=())  # one node: the launcher alone would do, but the node job keeps one pod
    assert [h for _, h in dj.pods(single, runtime)] == ["tj-node-0-0", "tj-launcher-0-0"]
    runtime = copy.deepcopy(runtime)
    runtime["spec"]["mlPolicy"]["mpi"]["runLauncherAsNode"] = False
    assert dj.hostfile(single, runtime) == "tj-node-0-0.tj slots=2\n"  # smoke: train.ranks 2 per pod


def test_launcher_runs_exactly_the_rendered_command_with_the_plugins_env() -> None:
    obj, runtime = render(parent_run_id="0123abc")
    trainer = obj["spec"]["trainer"]
    got = containers(obj, runtime, files={dj.config_path(obj): "/host/smoke.yaml"})
    launcher, node = got["tj-launcher-0-0"], got["tj-node-0-0"]
    assert launcher.command == trainer["command"] and launcher.image == trainer["image"]
    assert dj.config_path(obj) == "/opt/tuna/configs/smoke.yaml"
    rendered = {e["name"]: e["value"] for e in trainer["env"]}
    assert rendered["TUNA_MLFLOW_PARENT_RUN_ID"] == "0123abc"
    assert "TUNA_MLFLOW_PARENT_RUN_ID" in rendered["TUNA_FORWARD_ENV"].split()  # reaches the ranks on the node pods
    assert launcher.env == {**rendered, "OMPI_MCA_orte_default_hostfile": "/etc/mpi/hostfile",
                            "OMPI_MCA_orte_keep_fqdn_hostnames": "true", "OMPI_MCA_orte_set_default_slots": "1",
                            "OMPI_MCA_plm_rsh_args": "-o ConnectionAttempts=10"}
    # The node pods run the runtime's sshd as uid 1000 and get no TrainJob env (mpirun -x carries it).
    node_spec = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert node.command == [*node_spec["containers"][0]["command"], *node_spec["containers"][0]["args"]]
    assert node.command[0] == "/usr/sbin/sshd" and node.env == {} and node.image == trainer["image"]
    for c in (launcher, node):
        assert (c.user, c.groups, c.shm_size, c.cpus) == ("1000", [1000], str(2**30), "2")  # 4 CPUs capped at 2 cores
        paths = {m.path: m for m in c.mounts}
        assert paths["/home/mpiuser/.ssh"] == dj.Mount("/keys", "/home/mpiuser/.ssh", True)
        assert paths["/mnt/tuna"] == dj.Mount("/mnt/tuna", "/mnt/tuna")  # the data PVC: same path on the host
        assert paths["/opt/tuna/configs/smoke.yaml"] == dj.Mount("/host/smoke.yaml", "/opt/tuna/configs/smoke.yaml", True)
    assert {m.path for m in launcher.mounts} - {m.path for m in node.mounts} == {"/etc/mpi"}
    assert list(got) == ["tj-node-0-0", "tj-launcher-0-0"]  # nodes first: the launcher depends on them being ready


def test_docker_run_argv_names_the_pod_its_alias_and_the_command_verbatim() -> None:
    obj, runtime = render()
    launcher = containers(obj, runtime, claims={"tuna-data": "/srv/data"})["tj-launcher-0-0"]
    argv = dj.run_args(launcher, "tj-net", "tj")
    assert argv[:4] == ["docker", "run", "-d", "--name"]
    assert shlex.join(argv[argv.index("--hostname"):argv.index("--hostname") + 6]) == \
        "--hostname tj-launcher-0-0 --network tj-net --network-alias tj-launcher-0-0.tj"
    assert "/srv/data:/mnt/tuna" in argv and "OMPI_MCA_plm_rsh_args=-o ConnectionAttempts=10" in argv
    cmd = obj["spec"]["trainer"]["command"]
    entry = argv.index("--entrypoint")
    assert argv[entry + 1] == cmd[0] and argv[entry + 2] == obj["spec"]["trainer"]["image"] and argv[entry + 3:] == cmd[1:]


def test_secret_env_is_filled_from_the_given_secrets_or_refused() -> None:
    overrides = (*TWO_NODES, "cluster.s3_secret=tuna-s3")
    obj, runtime = render(overrides=overrides)
    with pytest.raises(DockerJobError, match="Secret 'tuna-s3' key 'AWS_ACCESS_KEY_ID' was not given"):
        dj.launcher_env(obj, runtime)
    env = dj.launcher_env(obj, runtime, {"tuna-s3": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}})
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("a", "b") and "AWS_ENDPOINT_URL" not in env


def test_what_docker_cannot_run_is_refused_in_one_line() -> None:
    obj, runtime = render()
    bad = copy.deepcopy(obj)
    bad["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"]["spec"]["volumes"][0] = {"name": "dshm", "hostPath": {"path": "/dev/shm"}}
    with pytest.raises(DockerJobError, match="volume 'dshm' \\(hostPath\\): only PVCs"):
        containers(bad, runtime)
    pytorch = jobs.render_pytorchjob(load_recipe(SMOKE), 1, "tuna", name="pj")
    with pytest.raises(DockerJobError, match="only a TrainJob"):
        containers(pytorch, runtime)
    with pytest.raises(DockerJobError, match="mpiImplementation 'Intel'"):
        other = copy.deepcopy(runtime)
        other["spec"]["mlPolicy"]["mpi"]["mpiImplementation"] = "Intel"
        dj.hostfile(obj, other)


@pytest.mark.parametrize(("q", "n"), [("1Gi", 2**30), ("8Gi", 8 * 2**30), ("500M", 500 * 10**6), ("1024", 1024)])
def test_memory_quantities(q: str, n: int) -> None:
    assert dj.quantity_bytes(q) == n


def test_cpu_limits_are_capped_at_the_machines_cores() -> None:
    assert (dj.cpu_limit("4", 2), dj.cpu_limit("500m", 2), dj.cpu_limit("1.5", 8)) == ("2", "0.5", "1.5")


def test_ssh_keys_are_the_plugins_secret_files(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_public_key

    dj.write_ssh_keys(tmp_path / "ssh")
    private = (tmp_path / "ssh/id_rsa").read_bytes()
    public = (tmp_path / "ssh/id_rsa.pub").read_bytes()
    assert private.startswith(b"-----BEGIN EC PRIVATE KEY-----") and public.startswith(b"ecdsa-sha2-nistp521 ")
    assert (tmp_path / "ssh/authorized_keys").read_bytes() == public and public.endswith(b"\n")
    key = load_pem_private_key(private, None)
    assert load_ssh_public_key(public).public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    if os.geteuid() == 0:  # the Secret volume: root-owned, group fsGroup 1000, 0640 (ssh refuses a key its user owns + shares)
        st = (tmp_path / "ssh/id_rsa").stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 1000, 0o640)


def test_docker_overrides_mount_the_data_folder_at_its_own_path(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cfg = load_recipe(SMOKE, [f"run.data_dir={data}"])
    assert dj.docker_overrides(cfg) == [f"run.data_dir={data}", f"cluster.data_mount={data}"]
    cfg = load_recipe(SMOKE, [f"run.data_dir={data}", "cluster.data_pvc=null"])
    assert dj.docker_overrides(cfg)[-1] == "cluster.data_pvc=tuna-data"


def test_stage_job_refuses_a_data_folder_the_pod_user_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o755)
    if os.geteuid() == 1000:
        pytest.skip("the folder belongs to uid 1000 already")
    with pytest.raises(DockerJobError, match=f"chown -R 1000:1000 {tmp_path / 'd'}"):
        dj.stage_job(SMOKE, 1, "tuna", [f"run.data_dir={tmp_path / 'd'}", *TWO_NODES])
    os.chmod(tmp_path / "d", 0o777)
    obj, runtime, files = dj.stage_job(SMOKE, 1, "tuna", [f"run.data_dir={tmp_path / 'd'}", *TWO_NODES], resume=True,
                                       parent_run_id="p1")
    assert files == {"/opt/tuna/configs/smoke.yaml": str(SMOKE)}
    cmd = obj["spec"]["trainer"]["command"]
    assert "--resume" in cmd and f"run.data_dir={tmp_path / 'd'}" in cmd and "/mnt/tuna" not in " ".join(cmd)
    assert runtime["metadata"]["name"] == "tuna-deepspeed-distributed"


def test_cli_dry_run_prints_the_docker_run_of_every_pod(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tuna.cli import main

    data = tmp_path / "d"
    data.mkdir()
    data.chmod(0o777)
    argv = ["train", "--config", str(SMOKE), "--launcher", "docker", "--dry-run", "--stage", "1", f"run.data_dir={data}",
            *TWO_NODES]
    assert main(argv) == 0
    node, launcher = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert node[node.index("--entrypoint") + 1] == "/usr/sbin/sshd" and "<ssh-keys>:/home/mpiuser/.ssh:ro" in node
    assert "<hostfile-dir>:/etc/mpi:ro" in launcher and f"{data}:{data}" in launcher
    assert launcher[launcher.index("--entrypoint") + 1:][:3] == ["bash", "ghcr.io/tuna-platform/tuna:0.1.0", "-c"]
    data.chmod(0o755)
    if os.geteuid() != 1000:
        assert main(argv) == 2 and "chown -R 1000:1000" in capsys.readouterr().err

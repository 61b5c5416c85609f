# syntax=docker/dockerfile:1
# The TUNA project image (ghcr.io/tuna-platform/tuna:<version>): one image for the KFP components, the TrainJob /
# PyTorchJob pods (DeepSpeed over OpenMPI + SSH, Kubeflow Trainer's MPI runtime) and the CPU Triton scenario of the
# tuna-serving chart (tritonserver 2.51 + python backend from the nvidia-pytriton wheel).
#
#   docker build -t ghcr.io/tuna-platform/tuna:0.1.0 .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t ghcr.io/tuna-platform/tuna:0.1.0-cu128 .
#
# torch is installed first, pinned to the pyproject.toml version, from PyTorch's CPU index (an unpinned torch from
# PyPI pulls GBs of CUDA); `pip install .` then finds it satisfied. The host's pip configuration (our machines'
# find-links /opt/wheels, local indexes, constraints) is NOT seen inside the build: the image installs from the
# public indexes, or from a mirror given with --build-arg PIP_INDEX_URL=... .
# Runtime user: uid/gid 1000 `mpiuser` with home /home/mpiuser (what the Trainer MPI runtime mounts its SSH keys
# into and where sshd's user config lives), never root; the pods' securityContext also enforces non-root.

# Base image pinned by tag and digest (the digest public projects pin for this tag; verify it with
# `docker buildx imagetools inspect python:3.11.13-slim-bookworm` when bumping).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# ------------------------------------------------------------------------------------------------ build
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL}

# Compilers and the Open MPI headers: mpi4py and the DeepSpeed sdist are built here, not in the runtime image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libopenmpi-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade "pip>=24" \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && pip install "mpi4py==4.0.3"

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY platform/ platform/
# The KFP wiring installs as the packages tuna_pipelines and tuna_components (pyproject.toml maps these folders).
COPY pipelines/ pipelines/
COPY components/ components/
RUN pip install -c constraints.txt . && pip check

# tritonserver from the nvidia-pytriton wheel, runnable bare (DESIGN.md): a backend directory holding the bundle's
# backends/ with the Python 3.11 stub copied into backends/python/, at tritonserver's default location
# (/opt/tritonserver/backends, so the chart's plain `tritonserver --model-repository=...` finds it), and the binary
# on PATH.
RUN set -eu; \
    bundle="$(python -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent / "tritonserver")')"; \
    mkdir -p /opt/tritonserver; \
    cp -a "$bundle/backends" /opt/tritonserver/backends; \
    cp -a "$bundle/python_backend_stubs/3.11/triton_python_backend_stub" /opt/tritonserver/backends/python/; \
    ln -s "$bundle/bin/tritonserver" /opt/venv/bin/tritonserver; \
    test -d /opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs

# ---------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tuna" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/tuna-platform/tuna" \
      org.opencontainers.image.licenses="Apache-2.0"

# Open MPI (mpirun on the launcher, orted on the nodes) and OpenSSH (the Trainer MPI runtime: sshd on port 2222 in
# the node pods, ssh from mpirun). sshd runs as mpiuser on an unprivileged port: no setcap, no root.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openmpi-bin libopenmpi3 openssh-server openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && sed -i "s/[ #]\(.*StrictHostKeyChecking \).*/ \1no/g" /etc/ssh/ssh_config \
    && echo "    UserKnownHostsFile /dev/null" >> /etc/ssh/ssh_config \
    && sed -i "s/[ #]\(.*Port \).*/ \12222/g" /etc/ssh/ssh_config

RUN groupadd --gid 1000 mpiuser \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/mpiuser --shell /bin/bash mpiuser \
    && printf 'PidFile /home/mpiuser/sshd.pid\nHostKey /home/mpiuser/.ssh/id_rsa\nStrictModes no\nPort 2222\n' \
       > /home/mpiuser/.sshd_config \
    && mkdir -p /home/mpiuser/.cache \
    && chown -R 1000:1000 /home/mpiuser

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tritonserver /opt/tritonserver

# LD_LIBRARY_PATH (DESIGN.md): the interpreter's own libpython (sysconfig LIBDIR of the base image, /usr/local/lib)
# before any system one, and the libraries bundled with tritonserver (nvidia_pytriton.libs). PATH: the venv first,
# the python backend stub runs Python from there; PYTHONPATH lets the stub's embedded interpreter import tuna.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LD_LIBRARY_PATH=/usr/local/lib:/opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs \
    PYTHONPATH=/opt/venv/lib/python3.11/site-packages \
    HOME=/home/mpiuser \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    TOKENIZERS_PARALLELISM=false

# The repository inside the image (configs cluster.workdir): pods run `--config /opt/tuna/configs/<recipe>.yaml`.
WORKDIR /opt/tuna
COPY --chown=1000:1000 pyproject.toml README.md ./
COPY --chown=1000:1000 configs/ configs/
COPY --chown=1000:1000 platform/ platform/

USER 1000:1000
CMD ["tuna", "--help"]

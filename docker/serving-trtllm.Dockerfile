# The GPU serving image for TensorRT-LLM (the tuna-serving chart's gpu-trtllm scenario): NGC's Triton + TensorRT-LLM
# image with `tuna` added, serving the repository of `tuna export --trtllm` (its tensorrt_llm step runs TensorRT-LLM's
# PyTorch LLM API, tuna.serve.trtllm_engine) on the image's own Python, torch, TensorRT-LLM and tritonserver.
#
#   make image-serving-trtllm                       # FROM nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3 (NGC login)
#   make trtllm-standin && make image-serving-trtllm TRTLLM_BASE_IMAGE=tuna-trtllm-standin:py312   # no nvcr.io (here)
#
# Nothing of the base changes: tuna's source goes to /opt/tuna/platform (every step's model.py puts $TUNA_SOURCE_ROOT
# first on sys.path), and what the python steps need beyond the base (transformers 5, pymilvus, Milvus Lite, pillow)
# goes to a venv over the base's site-packages, /opt/tuna-steps, whose site-packages only those steps put on sys.path
# ($TUNA_STEPS_PATH): the tensorrt_llm step runs with TensorRT-LLM's own packages, untouched.
# BASE must have Python 3.11 or 3.12 as python3 with pip and torch, tritonserver on PATH and the python backend (with its
# stub) in /opt/tritonserver/backends/python; REQUIRE_TRTLLM=1 (default) also requires tensorrt_llm. Each gap fails the
# build in one line. The build context is the repository root.
ARG TRTLLM_BASE_IMAGE=nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3
FROM ${TRTLLM_BASE_IMAGE}
ARG TRTLLM_BASE_IMAGE
ARG VERSION=0.1.0
ARG REQUIRE_TRTLLM=1
USER 0:0
COPY docker/check-trtllm-base.sh /usr/local/lib/tuna/check-trtllm-base.sh
RUN REQUIRE_TRTLLM="${REQUIRE_TRTLLM}" sh /usr/local/lib/tuna/check-trtllm-base.sh

COPY docker/build-ca/ /tmp/docker/build-ca/
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120
# The steps' venv sees the base's packages (torch, numpy stay the base's; a requirement they satisfy is not
# reinstalled); torch is dropped from the constraints so that nothing can replace the base's build. The base's pip
# installs into it (--python): no ensurepip needed. The venv is made by the real interpreter, not a python3 symlink
# elsewhere: its home must hold the interpreter's own lib/ for the venv's Python to find its standard library.
COPY constraints.txt docker/trtllm-steps-requirements.txt /tmp/tuna/
RUN set -eu; \
    cert=""; [ -s /tmp/docker/build-ca/ca-certificates.crt ] && cert="--cert /tmp/docker/build-ca/ca-certificates.crt"; \
    python="$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"; \
    "$python" -m venv --system-site-packages --without-pip /opt/tuna-steps; \
    grep -v '^torch==' /tmp/tuna/constraints.txt > /tmp/tuna/constraints-steps.txt; \
    torch_before="$(python3 -c 'import torch; print(torch.__version__)')"; \
    python3 -m pip --python /opt/tuna-steps/bin/python install -q $cert --index-url "${PIP_INDEX_URL}" \
        -c /tmp/tuna/constraints-steps.txt -r /tmp/tuna/trtllm-steps-requirements.txt \
        || { echo "error: the python steps' packages did not install over ${TRTLLM_BASE_IMAGE} (pip output above)" >&2; exit 1; }; \
    site="$(/opt/tuna-steps/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"; \
    ln -s "$site" /opt/tuna-steps/site; \
    [ ! -d "$site/torch" ] || { echo "error: a steps requirement reinstalled torch over the base's $torch_before" >&2; exit 1; }; \
    rm -rf /tmp/tuna /tmp/docker

# tuna's source (no install: nothing of the base is touched) and what the image's users run it with.
WORKDIR /opt/tuna
COPY --chown=1000:1000 pyproject.toml README.md ./
COPY --chown=1000:1000 configs/ configs/
COPY --chown=1000:1000 platform/ platform/
COPY --chown=1000:1000 helm/ helm/
ENV TUNA_SOURCE_ROOT=/opt/tuna/platform \
    TUNA_STEPS_PATH=/opt/tuna-steps/site \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false
# Both halves import where they run: the steps' (tuna.model with transformers 5 from the venv) and the engine's (the
# base's Python alone; tensorrt_llm itself only when the base has it).
RUN set -eu; mkdir -p /models && chown 1000:0 /models && chmod 0775 /models; \
    PYTHONPATH="$TUNA_STEPS_PATH:$TUNA_SOURCE_ROOT" python3 -c "import tuna.serve.ensemble, tuna.model, tuna.retrieval.datastore, transformers; print('steps: transformers', transformers.__version__)"; \
    PYTHONPATH="$TUNA_SOURCE_ROOT" python3 -c "import tuna.serve.trtllm_step, tuna.serve.trtllm_engine, transformers; print('engine: transformers', transformers.__version__)"
LABEL org.opencontainers.image.title="tuna-serving-trtllm" \
      org.opencontainers.image.version="${VERSION}" \
      tuna.engines="hf,trtllm" \
      tuna.base="${TRTLLM_BASE_IMAGE}" \
      org.opencontainers.image.source="https://github.com/tuna-platform/tuna" \
      org.opencontainers.image.licenses="Apache-2.0"
EXPOSE 8000 8001 8002
USER 1000:1000
CMD ["tritonserver", "--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]

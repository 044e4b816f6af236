# Entry points. `make demo` and `make test` each set everything up first (idempotent).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= onnx,bench,test
DATE := $(shell date -u +%Y-%m-%d)

.PHONY: install demo test lint test-cpp test-sanitize test-python cuda-check cuda-check-if-available \
	cuda-binding-check cuda-binding-check-if-available gpu-check bench bench-report bench-engines deepsparse-env \
	fuzz clean FORCE

# torch is pinned and the extension is built without build isolation, so pip never pulls a second
# torch (an unpinned one brings gigabytes of CUDA packages). The build requirements, the runtime
# dependencies and the extras are those of pyproject.toml.
# The install is redone only when its inputs changed: the stamp, one per interpreter, torch pin and
# extras, is newer than pyproject.toml, setup.py, the build settings and every file and folder under
# csrc/ (folders: a source added or removed), and the extension is there. `make -B install` forces it.
INSTALL_ID := $(shell $(PYTHON) -c 'import hashlib, sys; print(hashlib.sha1(repr((sys.prefix, sys.argv[1:])).encode()).hexdigest()[:12])' '$(TORCH_SPEC)' '$(EXTRAS)' 2>/dev/null)
STAMP := build/.installed-$(INSTALL_ID)
INSTALL_INPUTS := pyproject.toml setup.py tools/build_config.py tools/build_flags.json tools/onnxruntime_headers.py $(shell find csrc)
install: $(STAMP)
$(STAMP): $(INSTALL_INPUTS) $(if $(wildcard sparse_rt/_C*.so),,FORCE)
	@mkdir -p $(@D) && touch $@.new  # the stamp's time is the start: edits made meanwhile count
	$(PYTHON) tools/build_config.py build-requires --exclude torch | xargs $(PIP) install -q $(TORCH_SPEC)
	$(PYTHON) tools/onnxruntime_headers.py || echo "the 'sparse' ONNX flavour will run on Python ops"
	$(PIP) install -q --no-build-isolation -e ".[$(EXTRAS)]"
	@mv $@.new $@

demo: install
	$(PYTHON) -m sparse_rt demo

# Lint, the C++ kernel tests (plain and under ASan + UBSan), the nvcc compile check of the kernels, the
# CUDA build of the extension (compiled and linked, no GPU), then the Python suite.
test: install lint test-cpp test-sanitize cuda-check-if-available cuda-binding-check-if-available test-python

# ruff's rules are in pyproject.toml ([tool.ruff]); the package's import layers in .importlinter.
lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -c 'from importlinter.cli import lint_imports_command; lint_imports_command()' --no-cache

test-cpp:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j 2
	ctest --test-dir build/cmake --output-on-failure

test-sanitize:
	cmake -S . -B build/asan -DSPARSE_RT_SANITIZE=ON > /dev/null
	cmake --build build/asan -j 2
	ctest --test-dir build/asan --output-on-failure

test-python:
	$(PYTHON) -m pytest tests -q

# nvcc, its flags and the architectures (sm_80, sm_90) come from tools/build_config.py.
cuda-check:
	$(PYTHON) tools/cuda_check.py

# The extension's CUDA build (setup.py with SPARSE_RT_CUDA=1: kernels and torch binding) compiled and
# linked against the CUDA build of the installed torch's release, without a GPU, then its library
# checked: a CUDA kernel registered for every op, every symbol resolved. That torch wheel is downloaded
# once into ~/.cache/sparse_rt (a skip when it cannot be; SPARSE_RT_CUDA_TORCH=DIR uses a folder holding
# one instead); a pass is remembered there, so an unchanged build is not redone.
cuda-binding-check: install
	$(PYTHON) tools/cuda_binding_check.py

# $(call if-nvcc,TARGET): make TARGET where nvcc exists, else say that it is skipped.
if-nvcc = @if $(PYTHON) tools/build_config.py nvcc > /dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(1); \
	else echo "$(1) skipped: nvcc not found"; fi

cuda-check-if-available:
	$(call if-nvcc,cuda-check)

cuda-binding-check-if-available:
	$(call if-nvcc,cuda-binding-check)

# One prepared run on a GPU machine (tools/gpu_check.py; README "GPU check"): builds the extension in
# place against the torch installed there (no install, no pin, no network), runs the CUDA tests, the
# kernels under compute-sanitizer and the GPU benchmarks, and writes benchmarks/results/cuda-DATE.json
# (GPU_CHECK_OUT=DIR: DIR/cuda-DATE.json and the logs). DRY_RUN=1 rehearses it on the CPU.
GPU_CHECK_FLAGS ?=
gpu-check:
	$(PYTHON) tools/gpu_check.py $(if $(DRY_RUN),--dry-run) $(if $(GPU_CHECK_OUT),--out $(GPU_CHECK_OUT)) $(GPU_CHECK_FLAGS)

# CPU benchmarks (DLMC linear and conv layers, end-to-end models); the speedups of this run go to
# benchmarks/results/cpu-*.json, then a PNG and the README's table are made from them.
CPU_BENCH_FLAGS := -q -p no:cacheprovider --benchmark-max-time=0.25 --benchmark-warmup=on --benchmark-columns=median,iqr,rounds
bench: install
	for suite in linear conv plan e2e; do \
		$(PYTHON) -m pytest benchmarks/test_cpu_$$suite.py $(CPU_BENCH_FLAGS) \
			--speedup-json benchmarks/results/cpu-$$suite-$(DATE).json || exit 1; \
	done
	$(PYTHON) benchmarks/plot_cpu.py
	$(PYTHON) benchmarks/update_readme.py cpu

# `sparse-rt bench` on zoo models (MODEL:SPARSITIES) against every baseline (sparse-rt bench --baselines);
# writes benchmarks/results/bench-MODEL-DATE.{json,png}, then the README's table from them.
BENCH_MODELS ?= resnet50:0.8,0.9,0.95 bert_encoder:0.9 cifar_resnet:0.9
BENCH_FLAGS ?= --batch 1,8 --time 3 --warmup 0.5 --no-progress
bench-report: install
	@for spec in $(BENCH_MODELS); do \
		model=$${spec%%:*}; out=benchmarks/results/bench-$$model-$(DATE); \
		$(PYTHON) -m sparse_rt bench $$model --sparsity $${spec#*:} $(BENCH_FLAGS) --json $$out.json --plot $$out.png \
			|| exit 1; \
	done
	$(PYTHON) benchmarks/update_readme.py bench

# sparse_rt against torch, onnxruntime (dense and sparse flavour), OpenVINO and DeepSparse, ResNet-50 and
# BERT-base over sparsities 0.5-0.98 (hours on 2 cores): benchmarks/results/engines-DATE.{json,png}.
# DeepSparse (end of life) runs from its own environment, build/deepsparse-venv: `make deepsparse-env`
# creates it (pinned versions) or says why it cannot; bench-engines creates it when missing.
BENCH_ENGINES_FLAGS ?=
bench-engines: install
	$(PYTHON) benchmarks/bench_engines.py $(BENCH_ENGINES_FLAGS)

deepsparse-env:
	$(PYTHON) benchmarks/deepsparse_env.py

# Fuzzes every untrusted-input surface (tools/fuzz.py: .srt and checkpoint loaders, ops, conv geometry,
# layer state dicts, ONNX sessions, files changed or special, the CLI), each target in a memory-capped
# subprocess so that crashes and hangs are counted; the report goes to benchmarks/results/.
FUZZ_CASES ?= 100000
fuzz: install
	$(PYTHON) tools/fuzz.py --cases $(FUZZ_CASES) --jobs 2 --case-timeout 30 --workdir build/fuzz --json benchmarks/results/fuzz-$(DATE).json

clean:
	rm -rf build sparse_rt/*.so *.egg-info

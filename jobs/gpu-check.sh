#!/usr/bin/env bash
# Everything hpcdl can only check on a GPU, in one command and one report, for the day a
# GPU machine is available (one H100/H200: under 8 minutes; the step timeouts add up to 7:50).
#   jobs/gpu-check.sh             # or: make gpu-check
#   jobs/gpu-check.sh --dry-run   # or: make gpu-check ARGS=--dry-run  (lists the steps)
#   GPU_CHECK_ONLY=gpu-tests,train-cuda-amp jobs/gpu-check.sh   # rerun some steps only
# Report: $OUT/gpu-check-report.md (OUT defaults to out/gpu-check), with each step's
# command, exit status, time and the tail of its output; JSON results beside it.
# Exit status: 0 only if every step passed (a step that cannot apply, e.g. CUDA-aware
# allreduce on an MPI that is not, is recorded as SKIP and does not fail the run).
# Installs what it needs into .venv: make setup, torch's CUDA build if the venv's torch has
# no CUDA (TORCH_CUDA from TORCH_CUDA_INDEX, default torch==2.13.0+cu128), the cuda extra
# (CuPy, NVRTC 12). Needs PyPI and download.pytorch.org (or a warm pip cache).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
ONLY=${GPU_CHECK_ONLY:-}
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${OUT:-out/gpu-check}
PY=.venv/bin/python
HPCDL=.venv/bin/hpcdl
TORCH_CUDA_INDEX=${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}
TORCH_CUDA=${TORCH_CUDA:-torch==2.13.0+cu128}
REPORT="$OUT/gpu-check-report.md"
FAILED=0
START=$(date +%s)

steps=(
  # name | timeout s | command
  "install|120|make setup >/dev/null && { $PY -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null || $PY -m pip install -q --index-url $TORCH_CUDA_INDEX --extra-index-url https://pypi.org/simple '$TORCH_CUDA'; } && $PY -m pip install -q -e '.[cuda]' && $PY -c 'import torch, cupy; assert torch.cuda.is_available(), \"torch has no CUDA\"; print(torch.__version__, torch.cuda.get_device_name(0), \"cupy\", cupy.__version__)'"
  "info|15|nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv && $HPCDL info"
  "gpu-tests|110|HPCDL_REQUIRE_GPU=1 $PY -m pytest -q -p no:cacheprovider --color=no -rs tests/test_gpu.py tests/test_kernels.py tests/test_kernels_ptx.py"
  "gpu-tests-2-ranks|50|HPCDL_REQUIRE_GPU=1 timeout 50 $HPCDL launch -n 2 -- python -m pytest -q -p no:cacheprovider --color=no --with-mpi tests/test_gpu.py"
  "kernels-benchmark|40|$PY benchmarks/kernels.py --json $OUT/kernels.json"
  "allreduce-staged|40|HPCDL_CUDA_AWARE=0 timeout 40 $HPCDL launch -n 2 -- python benchmarks/allreduce.py --device cuda --no-peers --budget 0.3 --rounds 1 --sizes 65536,4194304,67108864 --json $OUT/allreduce-staged.json"
  "allreduce-cuda-aware|40|if $HPCDL info | grep -Eq 'CUDA-aware MPI +yes'; then HPCDL_CUDA_AWARE=1 timeout 40 $HPCDL launch -n 2 -- python benchmarks/allreduce.py --device cuda --no-peers --budget 0.3 --rounds 1 --sizes 65536,4194304,67108864 --json $OUT/allreduce-cuda-aware.json; else echo 'SKIP: this MPI is not CUDA-aware (hpcdl info)'; exit 77; fi"
  "train-cuda-amp|55|timeout 55 $HPCDL launch -n 2 -- python -m hpcdl.examples.train --device cuda --amp --epochs 2 --out $OUT/train"
)

if [[ $DRY == 1 ]]; then
  echo "gpu-check would run, in order (report: $REPORT):"
  for s in "${steps[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    printf '  %-22s (timeout %3ss)  %s\n' "$name" "$limit" "$cmd"
  done
  exit 0
fi

mkdir -p "$OUT"
{
  echo "# hpcdl gpu-check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null)"
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---|"
} >"$REPORT"
details=$(mktemp)
for s in "${steps[@]}"; do
  IFS='|' read -r name limit cmd <<<"$s"
  [[ -n $ONLY && ",$ONLY," != *",$name,"* ]] && continue
  t0=$(date +%s)
  log="$OUT/$name.log"
  timeout "$limit" bash -c "$cmd" >"$log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  case $rc in
    0) result=PASS ;;
    77) result=SKIP ;;
    124) result="FAIL (timed out after ${limit}s)"; FAILED=1 ;;
    *) result="FAIL (exit $rc)"; FAILED=1 ;;
  esac
  echo "| $name | $result | $dt |" >>"$REPORT"
  echo "== $name: $result (${dt}s)"
  { echo; echo "## $name: $result"; echo; echo '```'; echo "$cmd"; echo "---"; tail -n 40 "$log"; echo '```'; } >>"$details"
  if [[ $name == install && $rc != 0 ]]; then
    echo "install failed: the remaining steps need CUDA torch and CuPy" >>"$details"
    break
  fi
done
cat "$details" >>"$REPORT"
rm -f "$details"
echo >>"$REPORT"
echo "total: $(( $(date +%s) - START )) s" >>"$REPORT"
echo "report: $REPORT"
exit $FAILED

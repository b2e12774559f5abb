#!/usr/bin/env bash
# Every GPU figure of the project in one short device session (under 5 minutes):
#   1. fp16 MiniLM encode throughput (bench_encode.py --gpu: torch fp16, ONNX CUDA provider)
#   2. the FAISS GPU index (bench_index.py --gpu: VectorIndex on the GPU, 1e5 vectors)
#   3. the route benchmark in GPU mode (bench_route.py --gpu: accuracy, latency, batching)
# Where there is no GPU each step says so ("no GPU ...") and is skipped: the script then
# runs in seconds and exits 0. Logs and JSON go to $OUT (default: a new temp directory).
#   bash benchmarks/gpu_check.sh [--quick]      (--quick: smaller latency/throughput runs)
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LITELLM_LOCAL_MODEL_COST_MAP=True PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d -t gpu-check-XXXX)}
mkdir -p "$OUT"
N=300 REQ=384
if [[ "${1:-}" == "--quick" ]]; then N=100 REQ=128; fi
start=$(date +%s)
failed=0

echo "gpu_check: $(date -u +%FT%TZ), output in $OUT"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "nvidia-smi: not found"
fi
"$PY" - <<'PY' || true
import importlib
for mod in ("torch", "onnxruntime", "faiss"):
    try:
        m = importlib.import_module(mod)
    except Exception as exc:  # noqa: BLE001
        print(f"{mod}: not importable ({exc})")
        continue
    extra = ""
    if mod == "torch":
        extra = f" cuda={m.cuda.is_available()}"
    elif mod == "onnxruntime":
        extra = f" providers={m.get_available_providers()}"
    elif mod == "faiss":
        extra = f" gpus={getattr(m, 'get_num_gpus', lambda: 0)()}"
    print(f"{mod} {getattr(m, '__version__', '?')}{extra}")
PY

step() {  # step NAME SECONDS CMD...: run with a time cap, log to $OUT/NAME.log
  local name=$1 secs=$2
  shift 2
  local t0=$(date +%s)
  echo
  echo "== $name (cap ${secs}s): $*"
  timeout "$secs" "$@" 2>&1 | grep -v -e '^encoding ' -e 'it/s]' | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc in $(( $(date +%s) - t0 ))s"
  if [[ $rc -ne 0 ]]; then failed=$((failed + 1)); fi
}

step encode-fp16 80 "$PY" benchmarks/bench_encode.py --gpu --throughput torch,onnx
step faiss-gpu 70 "$PY" benchmarks/bench_index.py --gpu --sizes 100000 --queries 200 \
  --json "$OUT/index_gpu.json"
step route-gpu 130 "$PY" benchmarks/bench_route.py --gpu --backends torch,onnx,default \
  --n "$N" --concurrency 1,64 --requests "$REQ" --workloads short --boot 100 \
  --json "$OUT/route_gpu.json"

echo
echo "gpu_check: $failed step(s) failed; $(( $(date +%s) - start ))s in all; logs in $OUT"
grep -h -e "no GPU" "$OUT"/*.log 2>/dev/null | sed 's/^/  skipped: /'
exit $(( failed > 0 ))

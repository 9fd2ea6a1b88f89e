#!/usr/bin/env bash
# Every GPU figure in one call (under 10 minutes on one H100/H200-class GPU):
#
#   bash benchmarks/gpu.sh [RESULT.md]
#
# Installs what is missing beside the machine's PyTorch (from .whl/*.whl when the machine has no
# package registry, else from PyPI), then runs on BERT-base shapes: the QAT training step of each
# method vs FP32, INQ partitions (level-set fit + top-k freeze for lin/p2/mb), 2:4 / magnitude
# masks and the pattern-locked step, training throughput in fp32 / fp16 / bf16, GPTQ's calibration
# time, and a 3-job local
# sweep through `sweep launch --backend local` (each job pinned with CUDA_VISIBLE_DEVICES, the
# device each job trained on read back from its results). Figures go to RESULT.md (default
# $OUT/gpu_results.md when OUT is set, else benchmarks/gpu_results.md) as Markdown, each section
# with the command that made it; a step that fails or runs out of its time says so and the rest
# goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
result=${1:-${OUT:+$OUT/gpu_results.md}}
result=${result:-benchmarks/gpu_results.md}
mkdir -p "$(dirname "$result")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

missing=()
for module in transformers datasets accelerate submitit jinja2 openpyxl pandas yaml; do
  "$PY" -c "import $module" 2>/dev/null || missing+=("$module")
done
if [ ${#missing[@]} -gt 0 ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" .whl/*.whl
    export PYTHONPATH=$work/site
  else
    "$PY" -m pip install -q transformers datasets accelerate submitit jinja2 openpyxl pandas pyyaml
  fi
fi
export PYTHONPATH=$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

section() {  # section TITLE SECONDS COMMAND...: the command's output under its title
  local title=$1 limit=$2
  shift 2
  printf '\n## %s\n\n`%s`\n\n' "$title" "$*" >>"$result"
  local start=$SECONDS
  timeout "$limit" "$@" >"$work/out" 2>"$work/err"
  local rc=$?
  cat "$work/out" >>"$result"
  if [ $rc -ne 0 ]; then
    printf '\n(exit status %s%s after %ss; last lines of its stderr:)\n\n```\n%s\n```\n' "$rc" \
      "$([ $rc -eq 124 ] && echo ': out of time')" "$((SECONDS - start))" \
      "$(tail -n 8 "$work/err")" >>"$result"
  else
    printf '\n(%ss)\n' "$((SECONDS - start))" >>"$result"
  fi
  echo "gpu.sh: $title: exit status $rc in $((SECONDS - start)) s" >&2
}

{
  echo "# quantsweep on a GPU: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, '| CUDA', \
torch.version.cuda, '| transformers', transformers.__version__, '| GPU:', \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')" 2>&1
  echo '```'
} >"$result"

section "QAT training step ÷ FP32 (BERT-base, batch 8 × 128)" 150 \
  "$PY" benchmarks/qat_step_bench.py --device cuda --steps 10 --warmup 2
section "INQ partitions: level sets + top-k freeze, BERT-base encoder (85M weights)" 90 \
  "$PY" benchmarks/quantize_bench.py --device cuda --bits 1,2,4,8 --repeat 3
section "Sparsity: 2:4 and magnitude masks, pattern-locked step (BERT-base)" 90 \
  "$PY" benchmarks/sparsity_bench.py --device cuda --steps 10
section "Training throughput fp32 / fp16 / bf16 (BERT-base, batch 32 × 128)" 90 \
  "$PY" benchmarks/train_throughput.py --device cuda --batch 32 --steps 20
section "GPTQ calibration: 72 BERT-base Linears, 4 bits, groups of 128" 120 \
  "$PY" benchmarks/gptq_onnx_bench.py --device cuda --calib-only

# a 3-job local sweep: pinned GPUs, and the device each job trained on, read from its results
sweep_dir=$work/sweep
mkdir -p "$sweep_dir"
cat >"$sweep_dir/gpu3.yaml" <<EOF
name: gpu3
grid: {task: [sst2], method: [fp32, q8bert, lin], nbits: [8]}
base:
  model_name_or_path: $sweep_dir/assets/model
  data_dir: $sweep_dir/assets/SST-2
  max_seq_length: 64
  batch_size: 64
  finetune_epochs: 2
  qat_epochs: 1
  epochs_per_stage: 0.5
  logging_steps: 1000
resources: {gpus: 1, cpus: 4, mem: 16GB}
EOF
cat >"$work/sweep.sh" <<'SHEOF'
set -euo pipefail
"$PY" -m quantlib.demo "$sweep_dir/assets" >/dev/null
(cd "$sweep_dir" && "$PY" -m jobs.cli launch gpu3.yaml --backend local) >&2
"$PY" - "$sweep_dir/runs/gpu3" <<'PYEOF'
import json, sys
from pathlib import Path
ledger = json.loads((Path(sys.argv[1]) / "ledger.json").read_text())["jobs"]
print("| job | method | GPUs pinned (CUDA_VISIBLE_DEVICES) | device in its results | elapsed (s) | "
      "accuracy |\n|---|---|---|---|---:|---:|")
for jid, e in sorted(ledger.items(), key=lambda kv: kv[1]["index"]):
    out = Path(e["output_dir"])
    res = json.loads((out / "eval_results.json").read_text())
    st = json.loads((out / "status.json").read_text())
    print(f"| {jid} | {e['config']['method']} | {','.join(e.get('gpus') or []) or '-'} | "
          f"{res.get('device', '?')} | {st.get('elapsed_s')} | {res.get('eval_accuracy'):.4f} |")
PYEOF
SHEOF
export PY sweep_dir
section "3-job local sweep (fp32, q8bert, lin 8 bits on the demo task), GPUs pinned" 240 \
  bash "$work/sweep.sh"
echo "gpu.sh: figures in $result" >&2

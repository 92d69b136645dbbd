#!/usr/bin/env bash
# One GPU suite: the headline ratios of issue 16 in one prepared run (bench/README.md, "GPU suite").
#
#   bench/gpu_suite.sh --prepare   # here, with a package registry: wheels the GPU machine lacks -> .whl/
#   bench/gpu_suite.sh             # on the GPU machine (no registry): installs .whl/, then ~7 minutes
#   bench/gpu_suite.sh --smoke     # any machine, CPU: the same scripts on tiny settings (CI's unit tests)
#
# Prints each bench's headline as it finishes, then the summary (bench/suite_summary.py): generation's
# share of the FLOP ceiling (datasheet and measured matmul peak), generation end to end / model only,
# filtering end to end / encoder only, tuning per epoch re-encoding / cached. Every line of JSON goes to
# $OUT/gpu_suite.jsonl ($OUT: a fresh temporary folder when unset).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
WHEELS=${SYNTHREC_WHEELS:-$ROOT/.whl}
# What the GPU machine's image lacks (/work/.library/device/KINDS.md lists what it has), at the versions
# constraints.txt pins; their own needs are there already.
LACKS="diffusers importlib_metadata open_clip_torch ftfy wcwidth pydantic pydantic_core annotated-types
typing-inspection typing_extensions webdataset braceexpand"

mode=full
case "${1:-}" in
  --smoke) mode=smoke ;;
  --prepare) mode=prepare ;;
  "") ;;
  *) echo "usage: $0 [--smoke | --prepare]" >&2; exit 2 ;;
esac

if [ "$mode" = prepare ]; then
  mkdir -p "$WHEELS"
  pins=()
  for name in $LACKS; do
    pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt) || { echo "$name: not pinned in constraints.txt" >&2; exit 1; }
    pins+=("$pin")
  done
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
  done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEELS" "${pins[@]}" || exit 1
  du -sh "$WHEELS"
  echo "carry ${WHEELS#"$ROOT"/} to the GPU machine and run: bash bench/gpu_suite.sh"
  exit 0
fi

OUT=${OUT:-$(mktemp -d -t synthrec-gpu-suite-XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/gpu_suite.jsonl
: >"$RESULTS"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
if [ "$mode" = full ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/synthrec-site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=$PYTHONPATH:/tmp/synthrec-site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 SYNTHREC_CACHE=${SYNTHREC_CACHE:-$OUT/cache}
if [ "$mode" = smoke ]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU path, wherever it runs
  # the tiny models come from the shared build ($SYNTHREC_TINY_MODELS or the user's cache), not $OUT
  generate=(--smoke) features=(--smoke) train=(--smoke) budget=(300 300 300)
else
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no GPU: run with --smoke'" || exit 1
  nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader || true
  # within 8 minutes: ~3.5 generation (build, warm-up, 3 rounds, matmul peak), ~2 filtering, ~2 tuning
  generate=(--batch-size 16 --images 64 --rounds 3)
  features=(--images 4096 --batch-size 256 --rounds 3)
  train=(--vit-b16 1024 --batch-size 256 --rounds 3)
  budget=(210 120 120)
fi

failed=0
run() {  # run NAME SECONDS SCRIPT ARGS...: the bench's last line (its JSON) appended to the results
  local name=$1 seconds=$2
  shift 2
  echo "== $name: $*"
  if timeout "$seconds" "$PY" "$@" >"$OUT/$name.log" 2>"$OUT/$name.err"; then
    grep -v '^{' "$OUT/$name.log"
    tail -n 1 "$OUT/$name.log" >>"$RESULTS"
  else
    echo "$name failed or ran past ${seconds} s (exit $?); its stderr ends:" >&2
    tail -n 20 "$OUT/$name.err" >&2
    failed=1
  fi
}
run generate "${budget[0]}" bench/generate_gpu.py "${generate[@]}"
run features "${budget[1]}" bench/features_gpu.py "${features[@]}"
run train "${budget[2]}" bench/train_features.py "${train[@]}"
"$PY" bench/suite_summary.py "$RESULTS" || failed=1
exit $failed

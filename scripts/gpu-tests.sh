#!/usr/bin/env bash
# The checks that need an NVIDIA GPU: `easel backends` (the card, its libraries and
# their versions), tests/cuda.rs's `ignore`d tests (the CUDA path against the CPU path on
# the same weights), `easel bench --backend cuda --profile` in fp32 (cuDNN's heuristic
# and measured algorithms, each layer's time) and tf32 (and L-BFGS in fp32), and the
# default preset's wall time on the card.
#
#   scripts/gpu-tests.sh                 build here and run here (a GPU machine with cargo)
#   scripts/gpu-tests.sh --pack DIR      build here, write the test binary and easel to DIR
#   scripts/gpu-tests.sh --from DIR      run what --pack wrote (a GPU machine without cargo)
#
# Environment: EASEL_GPU_TEST_WEIGHTS, a safetensors file both paths use (default: the
# real weights, fetched on first use); EASEL_CUDA_LIB_DIR where cuDNN or cuBLAS are not
# on the system's path; SIZES for the benchmark (default 400x300,512x512,1024x1024,2048x2048).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${SIZES:-400x300,512x512,1024x1024,2048x2048}"

build() {
  cargo build --release
  cargo test --test cuda --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])' | tail -n1
}

# Each step runs even where an earlier one failed, so that one trip to a GPU machine
# brings back every figure it can; the exit status is the first failure's. Each has a
# time limit (the first argument, seconds, plus 5 s to stop), so that one that hangs
# leaves the others their time: 8 minutes at most in all, the weights' fetch aside.
status=0
step() {
  local limit="$1"; shift
  echo "== $* (at most ${limit} s)"
  timeout --signal=INT --kill-after=5 "$limit" "$@" ||
    { rc=$?; echo "== FAILED ($rc): $*"; [ "$status" -ne 0 ] || status=$rc; }
}

run_from() {
  local tests="$1" easel="$2"
  local weights=()
  [ -z "${EASEL_GPU_TEST_WEIGHTS:-}" ] || weights=(--weights "$EASEL_GPU_TEST_WEIGHTS")
  export EASEL_REPO_ROOT="$PWD" RUST_BACKTRACE=1
  # The weights before the timed steps, where no file is given (fetched once, cached).
  [ -n "${EASEL_GPU_TEST_WEIGHTS:-}" ] || "$easel" weights fetch
  # What this machine offers: the card, where each CUDA library came from, versions.
  step 20 "$easel" -v backends
  # tests/cuda.rs, all of them (the ignored ones need the GPU).
  # --show-output: the tf32 test prints its error against the CPU for the README.
  step 150 "$tests" --include-ignored --test-threads=1 --show-output
  # fp32 with cuDNN's heuristic and measured algorithms, then tf32; --profile splits the
  # forward pass, the backward pass and the step, and times each layer on the card.
  step 120 "$easel" bench --backend cuda --sizes "$sizes" --iters 10 --profile \
    --conv-search heuristic,measured "${weights[@]}"
  step 60 "$easel" bench --backend cuda --precision tf32 --sizes "$sizes" --iters 10 "${weights[@]}"
  # L-BFGS with its history on the card.
  step 45 "$easel" bench --backend cuda --optimizer lbfgs --sizes 400x300,1024x1024 --iters 5 "${weights[@]}"
  # The default preset from start to final.png.
  local out; out=$(mktemp -d)
  step 45 bash -c 'start=$(date +%s%N); "$0" run default --backend cuda --ui plain --out "$1" "${@:2}" >/dev/null &&
    echo "default preset on CUDA: $(( ($(date +%s%N) - start) / 1000000 )) ms from start to final.png"' \
    "$easel" "$out" "${weights[@]}"
  rm -rf "$out"
  return "$status"
}

case "${1:-}" in
  --pack)
    out="${2:?--pack DIR}"
    tests=$(build)
    mkdir -p "$out"
    strip -o "$out/cuda-tests" "$tests"
    strip -o "$out/easel" target/release/easel
    xz -T2 -6 -f "$out/cuda-tests" "$out/easel"
    du -sh "$out"/*
    ;;
  --from)
    dir="${2:?--from DIR}"
    for f in cuda-tests easel; do
      [ -x "$dir/$f" ] || { xz -dkf "$dir/$f.xz" && chmod +x "$dir/$f"; }
    done
    run_from "$dir/cuda-tests" "$dir/easel"
    ;;
  "")
    tests=$(build)
    run_from "$tests" target/release/easel
    ;;
  *)
    echo "usage: $0 [--pack DIR | --from DIR]" >&2
    exit 2
    ;;
esac

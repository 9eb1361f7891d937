#!/usr/bin/env bash
# The tests, with what they need installed first (with apt, where missing):
# - tmux: the workbench is driven in a real terminal;
# - Mesa's Vulkan drivers: the wgpu tests run on lavapipe where the machine has no GPU;
# - Slurm with munge: tests/sweep.rs starts a single-node cluster (scripts/slurm-local.sh);
# - g++: the unit tests compile the CUDA kernels as C++ and run them on the CPU;
# - pip: it downloads nvrtc, CUDA's run-time compiler, as NVIDIA's wheel (unpacked into
#   the cache, not installed), with which the unit tests compile the kernels for every
#   card CUDA 13 supports; no GPU is needed for either.
# The tests fetch the real VGG-19 weights themselves on first use.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers libvulkan1)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld slurmd slurm-client munge)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing what the tests need: ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# nvrtc 13.0, the oldest of the CUDA 13 line easel's cudarc bindings pin, unpacked from
# its wheel (no Python package is installed).
nvrtc_version=13.0.88
nvrtc_dir="${XDG_CACHE_HOME:-$HOME/.cache}/easel/nvrtc-$nvrtc_version"
# The folder is complete once it exists: the wheel is unpacked beside it and moved in.
if [ ! -d "$nvrtc_dir" ]; then
  echo "fetching nvrtc $nvrtc_version (NVIDIA's wheel) into $nvrtc_dir" >&2
  wheel_dir="$(mktemp -d)"
  trap 'rm -rf "$wheel_dir" "$nvrtc_dir.partial"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$wheel_dir" "nvidia-cuda-nvrtc==$nvrtc_version"
  rm -rf "$nvrtc_dir.partial" && mkdir -p "$nvrtc_dir.partial"
  python3 -m zipfile -e "$wheel_dir"/nvidia_cuda_nvrtc-*.whl "$nvrtc_dir.partial"
  mv "$nvrtc_dir.partial" "$nvrtc_dir"
fi
export EASEL_CUDA_LIB_DIR="$nvrtc_dir/nvidia/cu13/lib${EASEL_CUDA_LIB_DIR:+:$EASEL_CUDA_LIB_DIR}"

# failpoints: the fault tests (tests/faults.rs) make the engine fail on purpose.
cargo test --features failpoints "$@"

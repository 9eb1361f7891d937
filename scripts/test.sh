#!/usr/bin/env bash
# The tests, with what they need installed first: tmux (the workbench is driven in a
# real terminal), Mesa's Vulkan drivers (the wgpu tests run on lavapipe where the
# machine has no GPU) and Slurm with munge (tests/sweep.rs starts a single-node
# cluster with scripts/slurm-local.sh). The tests fetch the real VGG-19 weights themselves on first use.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers libvulkan1)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld slurmd slurm-client munge)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing what the tests need: ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# failpoints: the fault tests (tests/faults.rs) make the engine fail on purpose.
cargo test --features failpoints "$@"

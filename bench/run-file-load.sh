#!/usr/bin/env bash
# bench/run-file-load.sh OUT — issue 7's GPU run in one command: build (build-gpu/),
# the gpu-file test, gpuheap-file-load (log + JSON), then the core GPU test, with
# every log under OUT. Used for bench/RESULTS.md, "File loading".
set -uo pipefail
out=${1:?usage: bash bench/run-file-load.sh OUT}
cd "$(dirname "$0")/.."
mkdir -p "$out"
# The GPU machine has no cmocka: Debian's packages travel in .deps/ (shared/GPU.md).
if [ ! -f /usr/include/cmocka.h ] && compgen -G ".deps/*.deb" >/dev/null; then
  for f in .deps/*.deb; do dpkg -x "$f" /; done
fi
{
  nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
  echo "cpus: $(nproc)"; free -g; df -h /tmp
  echo "libcufile:"; ls -l /usr/local/cuda/lib64/libcufile* 2>&1; ldconfig -p | grep -i cufile
  ls -l /etc/cufile.json 2>&1; lsmod 2>/dev/null | grep -i nvidia_fs
} > "$out/env.txt" 2>&1
[ -f build-gpu/build.ninja ] || meson setup build-gpu > "$out/setup.log" 2>&1
if ! ninja -C build-gpu test/test_gpu_file bench/gpuheap-file-load test/test_gpu > "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"; exit 1
fi
GPUHEAP_VERBOSE=1 timeout 60 build-gpu/test/test_gpu_file > "$out/test_gpu_file.log" 2>&1
echo "test_gpu_file rc=$?" | tee "$out/summary.txt"
CUFILE_ALLOW_COMPAT_MODE=true timeout ${FILE_LOAD_TIMEOUT:-170} build-gpu/bench/gpuheap-file-load \
  --json "$out/file_load.json" ${FILE_LOAD_ARGS:-} > "$out/file_load.log" 2>&1
echo "file_load rc=$?" | tee -a "$out/summary.txt"
timeout ${GPU_TEST_TIMEOUT:-45} build-gpu/test/test_gpu > "$out/test_gpu.log" 2>&1
echo "test_gpu rc=$?" | tee -a "$out/summary.txt"
cp cufile.log "$out/" 2>/dev/null
grep -E "^\[ *(OK|FAILED|PASSED|  FAILED) *\]|^#" "$out/test_gpu_file.log" | tail -20
tail -25 "$out/file_load.log"

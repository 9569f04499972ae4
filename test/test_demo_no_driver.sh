#!/bin/sh
# test_demo_no_driver.sh — what the demo says on a machine without a CUDA driver
# (suite 'unit').
#
#   sh test_demo_no_driver.sh BUILD/bench/gpuheap-demo BUILD/test/has_driver
#
# Where libcuda.so.1 does not load, the demo says that no CUDA driver was found
# (not the CUDA runtime's "driver version is insufficient", which is what the
# runtime reports when there is no driver at all) and still runs gpuheap on its
# host backend, labelled as such. Skipped (77) where a driver loads, or where
# the demo was not built (-Dbench=false).
set -u
demo=$1
has_driver=$2
[ -x "$demo" ] || { echo "SKIP: $demo not built"; exit 77; }
"$has_driver" && { echo "SKIP: a CUDA driver loads here"; exit 77; }
. "$(dirname "$0")/checks.sh" # check, $tmp, checks_done

"$demo" --quick --json "$tmp/demo.json" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "exit 0" test $rc -eq 0
check "says no CUDA driver was found" grep -q "no CUDA driver" "$tmp/out"
check "not the runtime's 'insufficient'" sh -c "! grep -qi 'insufficient' '$tmp/out' '$tmp/err' '$tmp/demo.json'"
check "the host-backend run, labelled" grep -q "running on the HOST backend" "$tmp/out"
check "the host-backend run: its table" grep -q "^ *1 GiB " "$tmp/out"
check "the JSON says host and why" sh -c "grep -q '\"backend\": \"host\"' '$tmp/demo.json' && grep -q 'no CUDA driver' '$tmp/demo.json'"

checks_done

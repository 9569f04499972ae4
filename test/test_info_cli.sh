#!/bin/sh
# test_info_cli.sh — tools/gpuheap-info's arguments and its answer without a GPU
# (suite 'unit').
#
#   sh test_info_cli.sh BUILD/tools/gpuheap-info BUILD/test/has_driver
#
# --help says what the tool prints and which GPUHEAP_* variables it reads, on
# stdout with exit 0; an unknown argument is a usage error (exit 2) that prints
# nothing else; on the host backend it prints the heap's facts; a misspelt
# GPUHEAP_BACKEND is named (not "no CUDA driver"); and where no CUDA driver
# loads, the error is followed by a hint that GPUHEAP_BACKEND=host works.
set -u
info=$1
has_driver=$2
. "$(dirname "$0")/checks.sh" # check, $tmp, checks_done
run() { "$info" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }
unset GPUHEAP_BACKEND GPUHEAP_VERBOSE

run --help
check "--help: exit 0" test $rc -eq 0
check "--help: usage on stdout" grep -q "usage: gpuheap-info" "$tmp/out"
check "--help: says what it prints" grep -q "granularity" "$tmp/out"
for v in GPUHEAP_BACKEND GPUHEAP_RESERVE GPUHEAP_RELEASE_THRESHOLD GPUHEAP_HOST_BUDGET GPUHEAP_HOST_GRANULARITY \
    GPUHEAP_THREAD_CACHE GPUHEAP_VERBOSE; do
    check "--help: names $v" grep -q "$v" "$tmp/out"
done
run -h
check "-h: the same help" sh -c "test $rc -eq 0 && grep -q GPUHEAP_BACKEND '$tmp/out'"

run --bogus
check "unknown option: exit 2" test $rc -eq 2
check "unknown option: named, with the usage" sh -c "grep -q \"unknown argument '--bogus'\" '$tmp/err' && grep -q 'usage: gpuheap-info' '$tmp/err'"
check "unknown option: no heap made" test ! -s "$tmp/out"
run extra
check "a stray argument: exit 2" test $rc -eq 2

GPUHEAP_BACKEND=host run
check "host backend: exit 0" test $rc -eq 0
check "host backend: its facts" grep -q "^backend *host" "$tmp/out"

GPUHEAP_BACKEND=hots run
check "misspelt backend: exit 1" test $rc -eq 1
check "misspelt backend: named" grep -q "GPUHEAP_BACKEND=hots" "$tmp/err"
check "misspelt backend: not 'no CUDA driver'" sh -c "! grep -q 'no CUDA driver' '$tmp/err'"

if "$has_driver"; then
    echo "ok - no-driver hint # SKIP a CUDA driver loads here"
else
    run
    check "no driver: exit 1" test $rc -eq 1
    check "no driver: the error says so" grep -q "no heap: no CUDA driver" "$tmp/err"
    check "no driver: a hint after the error" sh -c "sed -n 2p '$tmp/err' | grep -q 'GPUHEAP_BACKEND=host'"
fi

checks_done

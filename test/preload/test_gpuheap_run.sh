#!/bin/sh
# test_gpuheap_run.sh — tools/gpuheap-run's arguments and environment (suite 'unit').
#
#   sh test_gpuheap_run.sh BUILD/tools/gpuheap-run
#
# Runs the script around `env` and `sh -c` and checks what the program sees:
# the interposer first in LD_PRELOAD as an absolute path that exists, earlier
# LD_PRELOAD entries kept after it, GPUHEAP_STATS / GPUHEAP_TRACE / GPUHEAP_VERBOSE
# only when asked, a relative trace path made absolute, the program's own
# arguments untouched (also ones that look like options, after --), the
# program's exit status passed on, and exit status 2 with a usage line for
# bad use.
set -u
run=$1
. "$(dirname "$0")/../checks.sh" # check, $tmp, checks_done

envof() { "$run" "$@" env >"$tmp/env" 2>"$tmp/err"; }
has() { grep -qx "$1" "$tmp/env"; }
lacks() { ! grep -q "^$1=" "$tmp/env"; }

unset GPUHEAP_STATS GPUHEAP_TRACE GPUHEAP_VERBOSE
LD_PRELOAD= envof
pre=$(sed -n 's/^LD_PRELOAD=//p' "$tmp/env")
check "LD_PRELOAD names the interposer" sh -c "case '$pre' in /*/libgpuheap-preload.so) exit 0;; *) exit 1;; esac"
check "the interposer exists" test -f "$pre"
check "no statistics unless asked" lacks GPUHEAP_STATS
check "no trace unless asked" lacks GPUHEAP_TRACE

LD_PRELOAD=/some/other.so envof
check "earlier LD_PRELOAD kept after the interposer" has "LD_PRELOAD=$pre:/some/other.so"

envof --stats
check "--stats sets GPUHEAP_STATS=1" has GPUHEAP_STATS=1
envof --verbose
check "--verbose sets GPUHEAP_VERBOSE=1" has GPUHEAP_VERBOSE=1
(cd "$tmp" && "$run" --trace t.log env >"$tmp/env")
check "--trace FILE: an absolute path" has "GPUHEAP_TRACE=$tmp/t.log"
envof --trace=/x/y.trace --stats --
check "--trace=FILE and -- together" sh -c "grep -qx GPUHEAP_TRACE=/x/y.trace '$tmp/env' && grep -qx GPUHEAP_STATS=1 '$tmp/env'"

out=$("$run" -- sh -c 'echo "$@"' sh --stats -x --trace)
check "the program's arguments pass untouched" test "$out" = "--stats -x --trace"
"$run" sh -c 'exit 7'
check "the program's exit status passes on" test $? -eq 7
"$run" sh -c 'test "$GPUHEAP_RUN_PID" = $$'
check "GPUHEAP_RUN_PID is the program's own pid" test $? -eq 0

"$run" >/dev/null 2>"$tmp/err"
check "no program: exit 2" test $? -eq 2
check "no program: usage" grep -q "usage: gpuheap-run" "$tmp/err"
"$run" --bogus env >/dev/null 2>"$tmp/err"
check "unknown option: exit 2" test $? -eq 2
"$run" --trace >/dev/null 2>&1
check "--trace without a file: exit 2" test $? -eq 2
"$run" --trace --stats env >/dev/null 2>&1
check "--trace followed by an option: exit 2" test $? -eq 2
"$run" --help >"$tmp/out"
check "--help: usage on stdout, exit 0" grep -q "usage: gpuheap-run" "$tmp/out"
check "--help: says what it does" grep -q "LD_PRELOAD" "$tmp/out"
for opt in --stats --trace --verbose -- --help; do
    check "--help: explains $opt" grep -q -e "^  $opt " -e "^  -h, $opt " "$tmp/out"
done
check "--help: the variables that pass through" grep -q "every GPUHEAP_\* variable passes through" "$tmp/out"
check "--help: GPUHEAP_PRELOAD_LIB" grep -q "GPUHEAP_PRELOAD_LIB" "$tmp/out"
check "--help: an example" grep -q "^  gpuheap-run --stats " "$tmp/out"
"$run" -h >"$tmp/out2"
check "-h: the same help" cmp -s "$tmp/out" "$tmp/out2"
"$run" --bogus env >/dev/null 2>"$tmp/err"
check "unknown option: the short usage, not the help" sh -c "! grep -q Options: '$tmp/err'"
GPUHEAP_PRELOAD_LIB="$pre" "$run" env >"$tmp/env"
check "GPUHEAP_PRELOAD_LIB is honoured" has "LD_PRELOAD=$pre"

checks_done

#!/bin/sh
# test_replay_cli.sh — tools/gpuheap-replay's answers to bad use (suite 'unit').
#
#   sh test_replay_cli.sh BUILD/tools/gpuheap-replay docs/example.trace bench/traces/cnn-shapes-h200.trace.gz \
#       bench/traces/torch-train-h200.trace.gz
#
# An unknown --backend or --only value, or a --lag that is no number of
# milliseconds, is a usage error (exit 2), never a silent
# replay on another backend; a file that is not a trace (empty, /etc/passwd-like,
# prose with one line that happens to parse as a record, binary) fails with a
# message that says so; a real trace, with its header or without it, replays;
# the recorded CNN, its GPU 40 ms behind, holds less in legacy free order; the
# summary names the recorded run's physical peak and the call that reached it;
# the second half of a fixed-shape training's calls maps nothing on a default
# heap and keeps moving pages on a paged one, and the replay says so.
set -u
replay=$1
example=$2
cnn=$3 # bench/traces/cnn-shapes-h200.trace.gz
fixed=$4 # bench/traces/torch-train-h200.trace.gz
. "$(dirname "$0")/checks.sh" # check, $tmp, checks_done
run() { "$replay" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }

run --backend hots "$example"
check "unknown --backend: exit 2" test $rc -eq 2
check "unknown --backend: named" grep -q "unknown backend 'hots'" "$tmp/err"
check "unknown --backend: usage" grep -q "usage: gpuheap-replay" "$tmp/err"
check "unknown --backend: nothing replayed" test ! -s "$tmp/out"
run --only malloc --backend host "$example"
check "unknown --only: exit 2" test $rc -eq 2

: >"$tmp/empty"
printf 'root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n' >"$tmp/passwd"
# Prose around one line that reads as a record (README.md's trace example).
{
    echo "Text, one event per line:"
    echo
    echo "    5123400 48211 malloc 0x7f2a00000000 0x0 0x0 1000 256 0 0x7f2a00200000 0 85"
    echo
    echo "| column | meaning |"
    echo "the rest of a document"
} >"$tmp/prose.md"
head -c 4096 /dev/urandom >"$tmp/binary" 2>/dev/null || printf '\001\002\003garbage\n' >"$tmp/binary"
for f in empty passwd prose.md binary; do
    run --backend host "$tmp/$f"
    check "$f: not a trace, exit 1" test $rc -eq 1
    check "$f: says it is not a trace" grep -q "not a gpuheap trace" "$tmp/err"
    check "$f: no replay table" sh -c "! grep -q '^allocator' '$tmp/out'"
done
run --backend host "$tmp/missing.trace"
check "missing file: exit 1 and the reason" sh -c "test $rc -eq 1 && grep -q 'cannot read' '$tmp/err'"

run --backend host "$example"
check "a trace replays on the host backend" sh -c "test $rc -eq 0 && grep -q '^gpuheap ' '$tmp/out'"
grep -v '^#' "$example" >"$tmp/headless.trace"
run --backend host "$tmp/headless.trace"
check "a trace without its comment lines still replays" test $rc -eq 0
{ head -n 40 "$example"; echo "12 34 malloc 0x7f"; } >"$tmp/cut.trace"
run --backend host "$tmp/cut.trace"
check "a trace cut short (header, a torn line) still reads" test $rc -eq 0

run --backend host --lag 20 "$example"
check "--lag: a trace replays with a lagging host GPU" sh -c "test $rc -eq 0 && grep -q '^gpuheap ' '$tmp/out'"
run --backend host --lag -3 "$example"
check "--lag below 0: exit 2 and the reason" sh -c "test $rc -eq 2 && grep -q 'takes milliseconds' '$tmp/err'"
run --backend host --lag soon "$example"
check "--lag not a number: exit 2" test $rc -eq 2

# The CNN recorded under gpuheap-run, its GPU 40 ms behind: in event order the
# freed blocks wait and the heap maps beside them; in legacy free order they are
# handed out at once, and it holds what it holds with no lag at all.
frag() { awk '$1 == "gpuheap" { print $6 }' "$tmp/out"; }
run --backend host --lag 0 --free-order legacy "$cnn"
none=$(frag)
run --backend host --lag 40 "$cnn"
event=$(frag)
run --backend host --lag 40 --free-order legacy "$cnn"
legacy=$(frag)
check "--free-order legacy: the CNN replays" sh -c "test $rc -eq 0 && test -n '$legacy'"
check "--free-order legacy at 40 ms lag holds what no lag holds ($legacy vs $none)" test "$legacy" = "$none"
check "--free-order legacy at 40 ms lag holds less than events ($legacy vs $event)" \
    awk -v a="$legacy" -v b="$event" 'BEGIN { exit !(a + 0 < b - 0.1) }'
check "the recorded heap's physical peak" grep -q "recorded heap held at most 4610.0 MiB physical" "$tmp/out"
check "the call that first reached it, and the heap's work there" \
    grep -q "first in call 3820 of 5851, malloc of 711.0 MiB at 1.940 s: 1 creates, 0 releases, 1 maps, 0 unmaps, 1 fences" "$tmp/out"
# A fixed-shape training loop: past its warm-up a default heap maps nothing; a
# paged one holds less at its peak but keeps moving pages every step.
half() { sed -n 's/^  in the second half of the calls: \([0-9]*\) mappings, \([0-9]*\) unmaps.*/\1 \2/p' "$tmp/out"; }
run --backend host --free-order legacy --json "$tmp/fixed.json" "$fixed"
steady=$(half)
check "the second half's work is printed" test -n "$steady"
check "a default heap's second half maps nothing ($steady)" test "$steady" = "0 0"
check "the JSON has it" grep -q '"second_half": {"maps": 0, "creates": 0, "unmaps": 0' "$tmp/fixed.json"
GPUHEAP_PAGE_SIZE=2M "$replay" --backend host --free-order legacy "$fixed" >"$tmp/out" 2>"$tmp/err"
moving=$(half)
check "a paged heap's second half moves pages ($moving)" sh -c "set -- $moving; test \$1 -gt 100 && test \$2 -gt 100"
check "the second half counts less than the whole run" \
    awk -v s="${moving%% *}" '$2 == "mappings," && $1 + 0 > 0 { found = 1; exit !(s + 0 < $1 + 0) } END { if (!found) exit 1 }' "$tmp/out"

run --backend host --free-order later "$example"
check "--free-order neither event nor legacy: exit 2" sh -c "test $rc -eq 2 && grep -q 'takes event or legacy' '$tmp/err'"

checks_done

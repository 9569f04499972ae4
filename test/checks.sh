# test/checks.sh — the TAP-like checks the shell tests share (sourced, not run).
#
# Sourcing it makes $tmp (a folder removed at exit) and a failure count;
# `check NAME COMMAND...` runs the command and prints "ok - NAME" or
# "not ok - NAME"; `checks_done` prints the count and is the script's exit status.
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() { # check NAME CONDITION-COMMAND...
    name=$1
    shift
    if "$@"; then echo "ok - $name"; else echo "not ok - $name"; fails=$((fails + 1)); fi
}

checks_done() {
    echo "$fails failed"
    [ "$fails" -eq 0 ]
}

#!/bin/bash
# The standby worker ([worker] standby = true), CPU backend: a spare worker is
# kept started and waiting; after kill -9 of the serving worker the spare (not
# a new process) takes over, every streaming request completes equal to its
# fault-free output, a new spare starts behind it, and `staged restart worker`
# hands over to the spare as well.
source "$(dirname "$0")/lib.sh"
MODEL=$STAGED_MODELS/stories260K.gguf
[ -f "$MODEL" ] || skip "no $MODEL"
N=32; MAXTOK=160
export BIN
S=$(dirname "$0")/../scripts/staged
EP=ipc://$T/frontend.sock
CFG=$T/c.ini
MAX_SEQS=32 write_config "$CFG" "$MODEL" "[http]
enabled = false"
sed -i 's/^\[worker\]$/[worker]\nstandby = true/' "$CFG"
trap '"$S" stop "$CFG" >/dev/null 2>&1; cleanup' EXIT

"$S" start "$CFG" >/dev/null || fail "start: $(tail -n 20 $T/logs/*.log)"

standby_ready() { # prints the ready standby's pid, or fails after 10 s
    local t sb
    for t in $(seq 100); do
        sb=$("$S" status "$CFG" | sed -n 's/^worker .* standby=\([0-9][0-9]*\).*/\1/p')
        [ -n "$sb" ] && { echo "$sb"; return 0; }
        sleep 0.1
    done
    fail "no standby worker became ready: $("$S" status "$CFG")"
}

"$BIN/staged-loadgen" --endpoint "$EP" --n $N --max-tokens $MAXTOK --seed 7 --out "$T/ref" \
    || fail "fault-free reference run"
compare() { # DIR: every output equals the reference
    for i in $(seq 0 $((N - 1))); do
        cmp -s "$T/ref/$i.txt" "$1/$i.txt" || fail "$1: request $i differs from the fault-free run"
    done
}

for how in kill restart; do
    sb=$(standby_ready)
    old=$(cat "$T/logs/worker.pid")
    out=$T/$how
    "$BIN/staged-loadgen" --endpoint "$EP" --n $N --max-tokens $MAXTOK --seed 7 --out "$out" \
        --idle-ms 1000 >"$out.log" 2>&1 &
    lg=$!
    sleep 0.15
    if [ $how = kill ]; then kill -9 "$old"; else "$S" restart worker "$CFG" >/dev/null; fi
    wait $lg || fail "$how: $(cat "$out.log")"
    compare "$out"
    now=$(cat "$T/logs/worker.pid")
    [ "$now" = "$sb" ] || fail "$how: worker pid $now, expected the standby $sb to take over"
    grep -q "standby worker (pid $sb) takes over" "$T/logs/worker.log" || fail "$how: no takeover logged"
    next=$(standby_ready)
    [ "$next" != "$sb" ] && [ "$next" != "$old" ] || fail "$how: no new standby ($next)"
    echo "$how: worker $old -> standby $sb took over, new standby $next; $(cat "$out.log")"
done
"$S" status "$CFG"
echo "standby test passed"

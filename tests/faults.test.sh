#!/bin/bash
# Fault tolerance on the CPU backend (issue 7): with 64 concurrent streaming
# requests running, kill -9 each stage in turn at random moments, several
# rounds: every request completes and equals its fault-free output, and the
# model file is read 0 times after the first load. Then the injected worker
# faults: abort at a decode step, a failed allocation, a hang (heartbeat
# detection).
source "$(dirname "$0")/lib.sh"
MODEL=$STAGED_MODELS/stories260K.gguf
[ -f "$MODEL" ] || skip "no $MODEL"
ROUNDS=${FAULT_ROUNDS:-2}
N=64; MAXTOK=160
export BIN
S=$(dirname "$0")/../scripts/staged
EP=ipc://$T/frontend.sock
CFG=$T/c.ini
MAX_SEQS=64 MAX_BATCH=256 write_config "$CFG" "$MODEL" "[http]
enabled = false"
CURRENT_CFG=$CFG
trap '"$S" stop "$CURRENT_CFG" >/dev/null 2>&1; cleanup' EXIT

"$S" start "$CFG" >/dev/null || fail "start: $(tail -n 20 $T/logs/*.log)"
"$BIN/staged-loadgen" --endpoint "$EP" --n $N --max-tokens $MAXTOK --seed 7 --out "$T/ref" \
    || fail "fault-free reference run"

compare() { # DIR: every output equals the reference
    for i in $(seq 0 $((N - 1))); do
        cmp -s "$T/ref/$i.txt" "$1/$i.txt" || fail "$1: request $i differs from the fault-free run:
ref: $(head -c 300 $T/ref/$i.txt)
got: $(head -c 300 $1/$i.txt)"
    done
}

kills=0
for round in $(seq 1 $ROUNDS); do
    for stage in worker tokenizer frontend loader; do
        out=$T/r$round-$stage
        "$BIN/staged-loadgen" --endpoint "$EP" --n $N --max-tokens $MAXTOK --seed 7 --out "$out" \
            --idle-ms 1000 > "$out.log" 2>&1 &
        lg=$!
        sleep 0.$((RANDOM % 5 + 1))
        pid=$(cat "$T/logs/$stage.pid")
        kill -9 "$pid" && kills=$((kills + 1))
        wait $lg || fail "round $round, kill $stage: $(cat $out.log)"
        compare "$out"
        echo "round $round: kill -9 $stage (pid $pid): $(cat $out.log)"
        # wait until the killed stage is back before the next one
        for t in $(seq 100); do "$S" status "$CFG" | grep -q "^$stage state=ready" && break; sleep 0.1; done
    done
done

# the model file was read once, by the first loader only
H=$("$BIN/staged-ctl" ipc://$T/loader.sock '{"op":"health"}')
[ "$(json_field "$H" file_bytes_read)" = 0 ] || fail "a restarted loader read the model: $H"
for stage in tokenizer worker frontend; do
    pid=$(cat "$T/logs/$stage.pid")
    grep -q "$(readlink -f "$MODEL")" /proc/$pid/maps && fail "$stage maps the model file"
    ls -l /proc/$pid/fd | grep -q "$(readlink -f "$MODEL")" && fail "$stage has the model file open"
done
echo "$kills kills; model file bytes read after the first load: 0"
"$S" status "$CFG"
"$S" stop "$CFG" >/dev/null

# injected worker faults, each in a fresh deployment
for fault in "fault_abort_at_step = 40" "fault_fail_alloc_at = 30" "fault_hang_at_request = 20"; do
    FC=$T/f.ini
    cp "$CFG" "$FC"
    sed -i "s/^\[worker\]$/[worker]\n$fault/" "$FC"
    CURRENT_CFG=$FC
    "$S" start "$FC" >/dev/null || fail "start with $fault"
    out=$T/fault-$(echo "$fault" | cut -d' ' -f1)
    "$BIN/staged-loadgen" --endpoint "$EP" --n $N --max-tokens $MAXTOK --seed 7 --out "$out" \
        --idle-ms 1000 > "$out.log" 2>&1 || fail "$fault: $(cat $out.log)"
    compare "$out"
    grep -q "fault injection" "$T/logs/worker.log" || fail "$fault did not fire"
    restarts=$("$S" status "$FC" | sed -n 's/^worker .*restarts=\([0-9]*\).*/\1/p')
    [ "$restarts" -ge 1 ] || fail "$fault: worker was not restarted"
    echo "$fault: worker restarted $restarts time(s); $(cat $out.log)"
    if [[ $fault == fault_hang* ]]; then
        grep -q "worker silent for" "$T/logs/frontend.log" || fail "hang not detected by heartbeat"
        grep "worker silent for" "$T/logs/frontend.log"
        ms=$(sed -n 's/.*worker silent for \([0-9]*\) ms: treating it as dead.*/\1/p' "$T/logs/frontend.log" | head -1)
        [ "$ms" -le 2000 ] || fail "the hung worker was noticed after $ms ms (more than 2 s)"
    fi
    "$S" stop "$FC" >/dev/null
    rm -f "$T"/logs/*.log
done
echo "faults test passed"

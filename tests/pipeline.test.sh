#!/bin/bash
# End to end on the CPU (issue 6): scripts/staged starts the stages; 32
# concurrent streaming requests with different seeds all complete and each
# equals the same request run alone; cancel, deadline and BUSY; a flood of
# malformed messages leaves the service answering; restart of each stage
# while idle; stop drains.
source "$(dirname "$0")/lib.sh"
MODEL=$STAGED_MODELS/stories260K.gguf
[ -f "$MODEL" ] || skip "no $MODEL"
for b in staged-loader staged-tokenizer staged-worker staged-frontend staged-loadgen; do
    [ -x "$BIN/$b" ] || fail "missing $BIN/$b"
done
CFG=$T/c.ini
write_config "$CFG" "$MODEL" "[http]
enabled = false"
export BIN
S=$(dirname "$0")/../scripts/staged
EP=ipc://$T/frontend.sock
stop_all() { "$S" stop "$CFG" >/dev/null 2>&1; }
trap 'stop_all; cleanup' EXIT

"$S" start "$CFG" || fail "start failed: $(tail -n 20 $T/logs/*.log)"
"$S" status "$CFG" | tee "$T/status"
[ "$(grep -c 'state=ready' "$T/status")" = 4 ] || fail "not every stage ready"

# 32 concurrent streams, then each alone
"$BIN/staged-loadgen" --endpoint "$EP" --n 32 --max-tokens 48 --seed 100 --out "$T/together" \
    || fail "concurrent run"
for i in $(seq 0 31); do
    "$BIN/staged-loadgen" --endpoint "$EP" --n 1 --max-tokens 48 --seed $((100 + i)) \
        --out "$T/alone$i" >/dev/null || fail "alone run $i"
    cmp -s "$T/together/$i.txt" "$T/alone$i/0.txt" || fail "request $i differs when run alone:
together: $(cat $T/together/$i.txt)
alone:    $(cat $T/alone$i/0.txt)"
done
echo "32 concurrent streams equal their solo runs"
distinct=$(md5sum "$T"/together/*.txt | cut -d" " -f1 | sort -u | wc -l)
[ "$distinct" -gt 1 ] || fail "all outputs identical: seeds are not used"
grep -q '"completion_tokens": *48' "$T/together/0.final" || \
    grep -q '"finish_reason":"stop"' "$T/together/0.final" || fail "usage missing: $(cat $T/together/0.final)"

# stop strings: each output is the unstopped output cut before the first " Lily"
"$BIN/staged-loadgen" --endpoint "$EP" --n 32 --max-tokens 48 --seed 100 --stop " Lily" \
    --out "$T/stopstr" >/dev/null || fail "stop-string run"
cut_count=0
for i in $(seq 0 31); do
    python3 - "$T/together/$i.txt" "$T/stopstr/$i.txt" "$T/stopstr/$i.final" <<'PY' || fail "stop string, request $i"
import json, sys
full = open(sys.argv[1], encoding="utf-8").read()
got = open(sys.argv[2], encoding="utf-8").read()
final = json.load(open(sys.argv[3]))
k = full.find(" Lily")
if k >= 0:
    assert got == full[:k], (got, full)
    assert final["finish_reason"] == "stop", final
    sys.exit(0)
assert got == full and final["finish_reason"] == "length", (got, full, final)
PY
    grep -q " Lily" "$T/together/$i.txt" && cut_count=$((cut_count + 1))
done
[ $cut_count -gt 0 ] || fail "no output contained the stop string: the test proves nothing"
echo "stop strings: $cut_count of 32 outputs cut before \" Lily\", the rest unchanged"

# continuous batching: a short request submitted while long ones run is not
# held up by them (it finishes in a fraction of their time)
"$BIN/staged-loadgen" --endpoint "$EP" --n 4 --max-tokens 460 --seed 5 --out "$T/long" >/dev/null &
long=$!
for t in $(seq 200); do [ -s "$T/long/arrivals" ] && break; sleep 0.005; done
ls "$T"/long/*.final >/dev/null 2>&1 && fail "the long requests ended too soon to test batching"
"$BIN/staged-loadgen" --endpoint "$EP" --n 1 --max-tokens 8 --seed 6 --out "$T/short" >/dev/null || fail "short request"
wait $long || fail "long requests"
python3 - "$T/short/0.final" "$T/long/0.final" <<'PY' || fail "short request was held up by the long ones"
import json, sys
short = json.load(open(sys.argv[1]))["timings"]["total_ms"]
long = json.load(open(sys.argv[2]))["timings"]["total_ms"]
print(f"continuous batching: 8-token request {short} ms while 460-token requests took {long} ms")
assert short * 2 < long, (short, long)
PY

# cancel: long requests cancelled by the client
"$BIN/staged-loadgen" --endpoint "$EP" --n 4 --max-tokens 400 --cancel-after-ms 50 --out "$T/cancel" \
    | tee "$T/cancel.out" || fail "cancel run"
grep -q "cancelled=[1-4]" "$T/cancel.out" || fail "no request was cancelled"

# deadline: a request past its deadline is cancelled
"$BIN/staged-loadgen" --endpoint "$EP" --n 2 --max-tokens 400 --timeout-ms 30 > "$T/deadline.out"
grep -q "cancelled=2" "$T/deadline.out" || fail "deadline: $(cat $T/deadline.out)"

# BUSY: with a queue of 4, a burst of 40 gets busy answers at once
"$S" stop "$CFG" >/dev/null
sed -i 's/^\[frontend\]$/[frontend]\nqueue_limit = 4/' "$CFG"
"$S" start "$CFG" >/dev/null || fail "restart with queue_limit"
"$BIN/staged-loadgen" --endpoint "$EP" --n 40 --max-tokens 200 > "$T/busy.out"
grep -Eq "other=[1-9]" "$T/busy.out" || fail "no busy answers: $(cat $T/busy.out)"
grep -q "stop=\|length=" "$T/busy.out" || fail "busy run"
echo "busy: $(cat $T/busy.out)"

# malformed messages, then a good request
"$BIN/staged-loadgen" --endpoint "$EP" --garbage || fail "malformed messages"
for k in 1 2 3; do "$BIN/staged-loadgen" --endpoint "$EP" --garbage >/dev/null; done
"$BIN/staged-loadgen" --endpoint "$EP" --n 2 --max-tokens 16 || fail "service broken after garbage"

# restart each stage while idle
for s in loader tokenizer worker frontend; do
    "$S" restart "$s" "$CFG" | grep -q "^$s state=ready" || fail "restart $s"
    "$BIN/staged-loadgen" --endpoint "$EP" --n 1 --max-tokens 16 >/dev/null || fail "request after restart $s"
    echo "restart $s: ready, next request served"
done
"$S" status "$CFG"

"$S" stop "$CFG" | tee "$T/stopped"
[ "$(grep -c 'state=stopped' "$T/stopped")" = 4 ] || fail "stop"
echo "pipeline test passed"

#!/bin/bash
# The client library across a real frontend restart (docs/protocol.md,
# "Faults and restarts"): the frontend is killed with -9 while a stream is in
# flight (worker and tokenizer held with SIGSTOP so the request is mid-stream); the
# library notices the silence, asks status, hears "unknown" from the new
# frontend, resubmits with the same seed and skips the bytes it delivered.
# The caller's output must equal the same request run undisturbed.
# Then the same through the HTTP gateway (one stream, gateway unchanged).
source "$(dirname "$0")/lib.sh"
MODEL=$STAGED_MODELS/stories260K.gguf
[ -f "$MODEL" ] || skip "no $MODEL"
for b in staged-loader staged-tokenizer staged-worker staged-frontend staged-http staged-client; do
    [ -x "$BIN/$b" ] || fail "missing $BIN/$b"
done
export BIN
S=$(dirname "$0")/../scripts/staged
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
EP=ipc://$T/frontend.sock
CFG=$T/c.ini
write_config "$CFG" "$MODEL" "[http]
listen = 127.0.0.1:$PORT"
# long generations (the model's whole context), so the restart lands mid-stream
sed -i 's/^max_ctx = .*/max_ctx = 2048/' "$CFG"
trap 'kill -CONT $(cat $T/logs/tokenizer.pid $T/logs/worker.pid 2>/dev/null) 2>/dev/null; "$S" stop "$CFG" >/dev/null 2>&1; cleanup' EXIT
"$S" start "$CFG" >/dev/null || fail "start: $(tail -n 20 $T/logs/*.log)"

ARGS=(--endpoint "$EP" --seed 31337 --max-tokens 1800 --temperature 1.0 --min-p 0 --top-k 0 --top-p 1)
"$BIN/staged-client" generate "${ARGS[@]}" "Once upon a time" >"$T/ref.txt" || fail "reference run"
REFLEN=$(stat -c %s "$T/ref.txt")
[ "$REFLEN" -gt 200 ] || fail "reference too short ($REFLEN bytes)"

# run_with_restart OUTFILE CMD...: run CMD (stdout to OUTFILE); as soon as
# its first bytes arrive (worker and tokenizer held with SIGSTOP), kill -9 the
# frontend, wait for the supervisor's new one, release them; wait.
# Prints the bytes OUTFILE had when the frontend died; exit status of CMD.
run_with_restart() {
    python3 - "$T/logs" "$@" <<'PY'
import os, signal, subprocess, sys, time
logs, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
rd = lambda n: open(os.path.join(logs, n + ".pid")).read().strip()
held, fpid = [int(rd("tokenizer")), int(rd("worker"))], rd("frontend")
sig = lambda s: [os.kill(x, s) for x in held]
p = subprocess.Popen(cmd, stdout=open(out, "wb"), stderr=open(out + ".err", "wb"))
t0 = time.time()
while os.path.getsize(out) == 0 and p.poll() is None and time.time() - t0 < 20:
    time.sleep(0.0005)
sig(signal.SIGSTOP) # worker and tokenizer (which turns tokens into text): the stream stands still
before = os.path.getsize(out)
os.kill(int(fpid), signal.SIGKILL)
t0 = time.time()
while time.time() - t0 < 20:
    try:
        if rd("frontend") not in ("", fpid):
            break
    except OSError:
        pass
    time.sleep(0.01)
time.sleep(0.2)
sig(signal.SIGCONT)
rc = p.wait()
print(before)
sys.exit(rc)
PY
}

# 1. staged-client (the C library)
BEFORE=$(run_with_restart "$T/out.txt" "$BIN/staged-client" generate "${ARGS[@]}" --idle-timeout 300 \
    --timeout 60000 --verbose "Once upon a time") || fail "client failed across the restart: $(cat $T/out.txt.err)"
mv "$T/out.txt.err" "$T/err.txt"
grep -q "resubmitting" "$T/err.txt" || fail "no resubmission happened ($BEFORE of $(stat -c %s $T/out.txt) bytes before the kill): $(cat $T/err.txt; tail -n 30 $T/logs/frontend.log)"
[ "$BEFORE" -lt "$REFLEN" ] || fail "the stream had ended before the restart ($BEFORE bytes)"
cmp "$T/ref.txt" "$T/out.txt" || fail "output across the frontend restart differs:
ref: $(cat $T/ref.txt)
got: $(cat $T/out.txt)"
echo "staged-client: $BEFORE of $REFLEN bytes delivered before kill -9 of the frontend; resubmitted; output identical"

# 2. the HTTP gateway (its client library resubmits; the HTTP stream goes on)
BODY='{"model":"m","prompt":"Once upon a time","max_tokens":1800,"seed":31337,"temperature":1.0,"min_p":0,"top_k":0,"top_p":1,"stream":true}'
BEFORE=$(run_with_restart "$T/sse" curl -sN "http://127.0.0.1:$PORT/v1/completions" -d "$BODY") ||
    fail "curl failed"
grep -q '\[DONE\]' <<<"$(head -c "$BEFORE" "$T/sse")" && fail "the HTTP stream had ended before the restart"
GOT=$(python3 -c 'import json,sys
ev=[l[6:] for l in open(sys.argv[1]).read().split("\n") if l.startswith("data: ")]
assert ev[-1]=="[DONE]", ev[-2:]
print("".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1]), end="")' "$T/sse") || fail "bad stream: $(tail -c 400 $T/sse)"
[ "$GOT" = "$(cat $T/ref.txt)" ] || fail "HTTP stream across the frontend restart differs:
ref: $(cat $T/ref.txt)
got: $GOT"
grep -q "resubmitting" "$T/logs/http.log" || fail "gateway did not resubmit ($BEFORE bytes before): $(cat $T/logs/http.log; tail -n 20 $T/logs/frontend.log)"
echo "HTTP stream: frontend killed mid-stream, gateway resubmitted, text identical"
echo "client restart test passed"

#!/bin/bash
# A worker that stops because its loader restarted (exit status 75,
# gpu_worker/serve_main.h: a CUDA worker's mapped weights are gone with the
# loader) is started again at once and not counted as a failure: here a
# stand-in worker exits 75 at its first 8 starts (the standbys' among them),
# quickly, against [supervisor] max_restarts = 3, and the deployment still
# comes up and serves.
source "$(dirname "$0")/lib.sh"
MODEL=$STAGED_MODELS/stories260K.gguf
[ -f "$MODEL" ] || skip "no $MODEL"
REAL=$(cd "$BIN" && pwd)
S=$(dirname "$0")/../scripts/staged
mkdir -p "$T/bin"
for f in "$REAL"/staged-*; do ln -s "$f" "$T/bin/"; done
rm "$T/bin/staged-worker"
cat >"$T/bin/staged-worker" <<SH
#!/bin/bash
# the first 8 starts stop as a worker whose loader restarted
exec 9>"$T/exits.lock"; flock 9
n=\$(cat "$T/exits" 2>/dev/null || echo 0)
if [ "\$n" -lt 8 ]; then echo \$((n + 1)) >"$T/exits"; exit 75; fi
flock -u 9
exec "$REAL/staged-worker" "\$@"
SH
chmod +x "$T/bin/staged-worker"
export BIN=$T/bin
CFG=$T/c.ini
write_config "$CFG" "$MODEL" "[http]
enabled = false
[supervisor]
max_restarts = 3
backoff_ms = 10"
sed -i 's/^\[worker\]$/[worker]\nstandby = true/' "$CFG"
trap '"$S" stop "$CFG" >/dev/null 2>&1; cleanup' EXIT

"$S" start "$CFG" >/dev/null || fail "start: $(tail -n 20 "$T"/logs/worker.log)"
"$REAL/staged-loadgen" --endpoint "ipc://$T/frontend.sock" --n 2 --max-tokens 16 >"$T/lg.log" 2>&1 ||
    fail "requests after the restarts: $(cat "$T/lg.log")"
[ "$(cat "$T/exits")" = 8 ] || fail "the stand-in stopped $(cat "$T/exits") times, expected 8"
# the serving worker's stops (a standby's are not waited for): more than max_restarts
n=$(grep -c "stopped for the restarted loader" "$T/logs/worker.log")
[ "$n" -gt 3 ] || fail "$n worker stops for a restarted loader logged, expected more than 3"
grep -q "leaving it down" "$T/logs/worker.log" && fail "the supervisor gave the worker up"
echo "worker stopped $n times for a restarted loader, not counted as failures; $(cat "$T/lg.log")"

# Shared helpers for the shell tests (sourced). Each test gets its own
# directory, shm name and ipc endpoints, so tests never collide.
set -u
BIN=${BIN:-bin}
STAGED_MODELS=${STAGED_MODELS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/shared/models}
T=$(mktemp -d /tmp/staged-test.XXXXXX)
TAG=$(basename "$T" | tr -cd 'a-zA-Z0-9')
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    rm -f /dev/shm/staged-$TAG 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT

fail() { echo "FAIL: $*"; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

# write_config FILE MODEL [extra ini text]   (MAX_SEQS, MAX_BATCH override the worker's)
write_config() {
    cat >"$1" <<INI
[model]
path = $2
[shm]
name = /staged-$TAG
[log]
dir = $T/logs
[loader]
endpoint = ipc://$T/loader.sock
[tokenizer]
endpoint = ipc://$T/tokenizer.sock
[worker]
endpoint = ipc://$T/worker.sock
threads = 1
max_seqs = ${MAX_SEQS:-16}
max_batch = ${MAX_BATCH:-512}
max_ctx = 512
[frontend]
endpoint = ipc://$T/frontend.sock
${3:-}
INI
}

# wait_ready ENDPOINT [timeout_s]: poll health until it answers ok
wait_ready() {
    local t=${2:-20} i=0
    while [ $i -lt $((t * 10)) ]; do
        "$BIN/staged-ctl" "$1" '{"op":"health"}' --timeout 200 >/dev/null 2>&1 && return 0
        sleep 0.1; i=$((i + 1))
    done
    return 1
}

# json_field JSON KEY: print a top-level scalar field
json_field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print(json.dumps(v) if isinstance(v,(dict,list)) else v)' "$1" "$2"; }

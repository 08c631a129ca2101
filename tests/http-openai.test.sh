#!/bin/bash
# The official `openai` npm package (tests/npm, installed from its
# package-lock) drives the HTTP gateway unmodified: models, chat (plain,
# streaming, the package's stream helper), completions (plain, streaming),
# typed errors. Its texts must equal staged-client's for the same request and
# seed, and the greedy completion must equal the independent reference decode.
source "$(dirname "$0")/lib.sh"
MODEL=$STAGED_MODELS/stories260K.gguf
REF=$STAGED_MODELS/stories260K.reference-greedy.txt
[ -f "$MODEL" ] && [ -f "$REF" ] || skip "no $MODEL"
command -v node >/dev/null || skip "no node"
NPM_DIR=$(cd "$(dirname "$0")/npm" && pwd)
if [ ! -f "$NPM_DIR/node_modules/openai/package.json" ]; then
    (cd "$NPM_DIR" && npm ci --no-audit --no-fund >/dev/null 2>&1) ||
        skip "cannot install the openai package (npm ci in tests/npm failed: offline?)"
fi
for b in staged-loader staged-tokenizer staged-worker staged-frontend staged-http staged-client; do
    [ -x "$BIN/$b" ] || fail "missing $BIN/$b"
done
export BIN
S=$(dirname "$0")/../scripts/staged
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
EP=ipc://$T/frontend.sock
CFG=$T/c.ini
write_config "$CFG" "$MODEL" "[http]
listen = 127.0.0.1:$PORT
api_keys = sk-npm-test"
trap '"$S" stop "$CFG" >/dev/null 2>&1; cleanup' EXIT
"$S" start "$CFG" >/dev/null || fail "start: $(tail -n 20 $T/logs/*.log)"

PROMPT="Tell me a story about a dog."
SEED=4242
OUT=$(cd "$NPM_DIR" && BASE_URL=http://127.0.0.1:$PORT/v1 API_KEY=sk-npm-test PROMPT=$PROMPT SEED=$SEED \
    node openai-check.mjs 2>"$T/node.err") || fail "openai package run failed: $(tail -n 20 $T/node.err)"
echo "openai $(python3 -c 'import json;print(json.load(open("'"$NPM_DIR"'/node_modules/openai/package.json"))["version"])'): $OUT" | head -c 1500; echo

# the same chat and completion through staged-client
CHAT=$(printf '%s\n' "$PROMPT" | "$BIN/staged-client" chat --endpoint "$EP" --seed $SEED --max-tokens 40) ||
    fail "staged-client chat"
CHAT=${CHAT%$'\n'}
COMPL=$("$BIN/staged-client" generate --endpoint "$EP" --temperature 0 --max-tokens 60 "Once upon a time") ||
    fail "staged-client generate"

python3 - "$OUT" "$CHAT" "$COMPL" "$REF" <<'PY' || fail "openai package results do not match"
import ast, json, sys
o, chat, compl = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
ref = [ast.literal_eval(l[6:].strip()) for l in open(sys.argv[4]) if l.startswith("text: ")][0]
assert o["models"] == ["stories260K.gguf"], o["models"]
assert o["chat_object"] == "chat.completion" and o["chat_finish"] in ("stop", "length"), o
assert len(o["chat_text"]) > 0
assert o["chat_text"] == chat, ("chat via openai != staged-client", o["chat_text"], chat)
assert o["chat_stream_text"] == chat, ("streamed chat differs", o["chat_stream_text"], chat)
assert o["chat_helper_text"] == chat, ("stream helper differs", o["chat_helper_text"], chat)
assert o["chat_stream_chunks"] > 2 and o["chat_stream_finish"] == o["chat_finish"], o
u = o["chat_usage"]
assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] > 0, u
assert o["completion_text"] == compl == ref[len(" Once upon a time"):], (o["completion_text"], compl)
assert o["completion_stream_text"] == compl, o["completion_stream_text"]
assert o["completion_finish"] == "length"
assert o["bad_request_status"] == 400 and o["bad_request_class"] == "BadRequestError", o
assert o["auth_status"] == 401 and o["auth_class"] == "AuthenticationError", o
print(f"chat ({len(chat)} bytes) = streamed = stream helper = staged-client; "
      f"completion = streamed = staged-client = reference; 400/401 typed errors")
PY
echo "openai package test passed"

#!/bin/bash
# The tokenizer process: CLI tokenize/detokenize against llama.cpp's test
# vectors and the stories260K reference ids; the server on an ipc:// endpoint
# (--model), bad requests answered with errors while it keeps serving, clean
# SIGTERM; served mode over the loader's segment without reading the model file.
source "$(dirname "$0")/lib.sh"
TOK=$BIN/staged-tokenizer
[ -x "$TOK" ] || skip "no $TOK"
MODEL=$STAGED_MODELS/stories260K.gguf
[ -f "$MODEL" ] || skip "no $MODEL"

# --- CLI ---
got=$(printf 'Once upon a time' | "$TOK" tokenize "$MODEL" --bos) || fail "tokenize failed"
[ "$got" = "1 403 407 261 378" ] || fail "tokenize --bos: got '$got'"
got=$(printf 'Once upon a time' | "$TOK" tokenize "$MODEL")
[ "$got" = "403 407 261 378" ] || fail "tokenize without --bos: got '$got'"
got=$(echo "1 403 407 261 378" | "$TOK" detokenize "$MODEL")
[ "$got" = "Once upon a time" ] || fail "detokenize: got '$got'"
echo "9999999" | "$TOK" detokenize "$MODEL" 2>/dev/null && fail "detokenize accepted an id out of range"
for v in llama-spm qwen2; do
    f=$STAGED_MODELS/vocab/ggml-vocab-$v.gguf
    [ -f "$f" ] || continue
    python3 - "$TOK" "$f" <<'PY' || fail "CLI vectors $v"
import subprocess, sys
tok, f = sys.argv[1], sys.argv[2]
inp = open(f + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
out = open(f + ".out").read().split("\n")
assert len(inp) == 46, len(inp)
for i, s in enumerate(inp):
    r = subprocess.run([tok, "tokenize", f], input=s.encode(), capture_output=True, check=True)
    got = r.stdout.decode().strip()
    assert got == out[i].strip(), (i, s, got, out[i])
print(f, "46/46")
PY
done
# --special parses control tokens
Q=$STAGED_MODELS/vocab/ggml-vocab-qwen2.gguf
if [ -f "$Q" ]; then
    got=$(printf '<|im_start|>' | "$TOK" tokenize "$Q" --special)
    [ "$got" = "151644" ] || fail "--special: got '$got'"
    got=$(printf '<|im_start|>' | "$TOK" tokenize "$Q")
    [ "$got" != "151644" ] || fail "without --special the control token was parsed"
fi

# --- server with --model ---
CFG=$T/c.ini
write_config "$CFG" "$MODEL"
EP=ipc://$T/tokenizer.sock
"$TOK" --config "$CFG" --model "$MODEL" 2>"$T/t1.log" & PIDS+=($!); T1=$!
wait_ready "$EP" || fail "tokenizer not ready: $(cat $T/t1.log)"
R=$("$BIN/staged-ctl" "$EP" '{"id":1,"op":"encode","text":"Once upon a time"}')
[ "$(json_field "$R" tokens)" = "[1, 403, 407, 261, 378]" ] || fail "encode: $R"
for bad in '{"op":"nope"}' '{"op":"encode","text":"x","extra":1}' '{"id":3}' '[1,2]' \
           '{"op":"decode","tokens":[100000]}' '{"op":"chat","messages":"hi"}'; do
    R=$("$BIN/staged-ctl" "$EP" "$bad") && fail "accepted $bad: $R"
    echo "$R" | grep -q '"error"' || fail "no error reply for $bad: $R"
done
python3 - "$T/tokenizer.sock" <<'PY' || fail "raw garbage"
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send(b"\xff" * 100 + b"garbage"); s.close()
PY
R=$("$BIN/staged-ctl" "$EP" '{"id":"x","op":"decode","tokens":[1,403,407,261,378]}') || fail "decode after bad input: $R"
[ "$(json_field "$R" text)" = "Once upon a time" ] || fail "decode: $R"
kill -TERM $T1; wait $T1; rc=$?
[ $rc -eq 0 ] || fail "tokenizer exit status $rc after SIGTERM"

# --- fault injection: stop answering from the 3rd request on ---
CFG2=$T/hang.ini
write_config "$CFG2" "$MODEL" "[tokenizer]
fault_hang_at_request = 3"
EP2=ipc://$T/tokenizer.sock
"$TOK" --config "$CFG2" --model "$MODEL" 2>"$T/th.log" & PIDS+=($!); TH=$!
wait_ready "$EP2" || fail "hang tokenizer not ready: $(cat $T/th.log)"   # request 1
"$BIN/staged-ctl" "$EP2" '{"op":"health"}' >/dev/null || fail "request 2 not answered"
"$BIN/staged-ctl" "$EP2" '{"op":"health"}' --timeout 500 >/dev/null; rc=$?
[ $rc -eq 2 ] || fail "request 3 answered despite fault_hang_at_request = 3 (rc $rc)"
kill -TERM $TH; wait $TH

# --- served mode: vocab from the loader's segment ---
if [ -x "$BIN/staged-loader" ]; then
    "$BIN/staged-loader" --config "$CFG" 2>"$T/l.log" & PIDS+=($!); L=$!
    wait_ready "ipc://$T/loader.sock" || fail "loader not ready: $(cat $T/l.log)"
    "$TOK" --config "$CFG" 2>"$T/t2.log" & PIDS+=($!); T2=$!
    wait_ready "$EP" || fail "served tokenizer not ready: $(cat $T/t2.log)"
    R=$("$BIN/staged-ctl" "$EP" '{"id":2,"op":"encode","text":"Once upon a time"}')
    [ "$(json_field "$R" tokens)" = "[1, 403, 407, 261, 378]" ] || fail "served encode: $R"
    grep -q "$(basename "$MODEL")" /proc/$T2/maps && fail "served tokenizer mapped the model file"
    RCHAR=$(awk '/^rchar/ {print $2}' /proc/$T2/io)
    [ "$RCHAR" -lt "$(stat -c %s "$MODEL")" ] || fail "served tokenizer read $RCHAR bytes"
    echo "served mode: encode ok, model file not mapped, rchar=$RCHAR"
    kill -TERM $T2; wait $T2
    kill -TERM $L; wait $L
fi
echo "tokenizer: all checks passed"

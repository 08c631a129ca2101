#!/bin/bash
# The loader: stages the model, serves health/manifest, rejects bad
# requests, survives kill -9 and re-attaches reading 0 bytes of the file,
# rebuilds a damaged segment, unlinks on clean shutdown.
source "$(dirname "$0")/lib.sh"
MODEL=$STAGED_MODELS/stories260K.gguf
[ -f "$MODEL" ] || skip "no $MODEL"
CFG=$T/c.ini
write_config "$CFG" "$MODEL"
EP=ipc://$T/loader.sock

"$BIN/staged-loader" --config "$CFG" 2>"$T/l1.log" & PIDS+=($!); L1=$!
wait_ready "$EP" || fail "loader did not become ready: $(cat $T/l1.log)"
H=$("$BIN/staged-ctl" "$EP" '{"op":"health","id":"a"}')
[ "$(json_field "$H" reattached)" = False ] || fail "first start should build: $H"
[ "$(json_field "$H" file_bytes_read)" = "$(stat -c %s "$MODEL")" ] || fail "first start reads the file once: $H"
M=$("$BIN/staged-ctl" "$EP" '{"op":"manifest"}')
python3 - "$M" <<'PY' || fail "manifest: $M"
import json, sys
m = json.loads(sys.argv[1])
assert m["model"]["arch"] == "llama" and m["model"]["dim"] == 64 and m["model"]["n_layers"] == 5
assert len(m["tensors"]) == 48 and m["gpu"] is None
t = {x["name"]: x for x in m["tensors"]}
assert t["token_embd.weight"]["ne"][:2] == [64, 512] and t["token_embd.weight"]["type"] == "F32"
PY

# verify, full and device-only (the worker's start asks the latter): both answer
for req in '{"op":"verify"}' '{"op":"verify","segment":false}'; do
    V=$("$BIN/staged-ctl" "$EP" "$req") || fail "$req: $V"
    [ "$(json_field "$V" ok)" = True ] && [ "$(json_field "$V" bad_device)" = "[]" ] ||
        fail "$req: $V"
done

# bad requests get errors, the loader keeps serving
for bad in '{"op":"nope"}' '{"op":"health","extra":1}' '{"id":3}' '[1,2]' '{"op":5}'; do
    R=$("$BIN/staged-ctl" "$EP" "$bad") && fail "accepted $bad: $R"
    echo "$R" | grep -q '"error"' || fail "no error reply for $bad: $R"
done
python3 - "$T/loader.sock" <<'PY' || fail "raw garbage"
import socket, sys
# not a ZMTP peer at all: the loader must shrug it off
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send(b"\xff" * 100 + b"garbage"); s.close()
PY
"$BIN/staged-ctl" "$EP" '{"op":"health"}' >/dev/null || fail "loader stopped serving after bad input"

# kill -9: the segment survives, a new loader re-attaches reading 0 bytes
kill -9 $L1; wait $L1 2>/dev/null
[ -e /dev/shm/staged-$TAG ] || fail "segment gone after kill -9"
"$BIN/staged-loader" --config "$CFG" 2>"$T/l2.log" & PIDS+=($!); L2=$!
wait_ready "$EP" || fail "restarted loader not ready: $(cat $T/l2.log)"
H=$("$BIN/staged-ctl" "$EP" '{"op":"health"}')
[ "$(json_field "$H" reattached)" = True ] || fail "restart should re-attach: $H"
[ "$(json_field "$H" file_bytes_read)" = 0 ] || fail "restart read model bytes: $H"
RCHAR=$(awk '/^rchar/ {print $2}' /proc/$L2/io)
[ "$RCHAR" -lt "$(stat -c %s "$MODEL")" ] || fail "restarted loader read $RCHAR bytes (rchar)"
echo "restart: reattached, file_bytes_read=0, process rchar=$RCHAR"

# a damaged segment is rebuilt from the file by the next loader
kill -9 $L2; wait $L2 2>/dev/null
python3 - /dev/shm/staged-$TAG <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); f.seek(104); data_off, data_size = struct.unpack('<QQ', f.read(16))
pos = data_off + data_size // 2; f.seek(pos); b = f.read(1); f.seek(pos); f.write(bytes([b[0] ^ 1])); f.close()
PY
"$BIN/staged-loader" --config "$CFG" 2>"$T/l3.log" & PIDS+=($!); L3=$!
wait_ready "$EP" || fail "loader 3 not ready"
H=$("$BIN/staged-ctl" "$EP" '{"op":"health"}')
[ "$(json_field "$H" reattached)" = False ] || fail "damaged segment should be rebuilt: $H"
grep -q "checksum mismatch" "$T/l3.log" || fail "no log of why the segment was rebuilt"

# clean shutdown unlinks
kill -TERM $L3; wait $L3
[ -e /dev/shm/staged-$TAG ] && fail "segment left after clean shutdown"

# a bad model file: clear error, non-zero exit
head -c 5000 "$MODEL" > "$T/trunc.gguf"
write_config "$T/bad.ini" "$T/trunc.gguf"
"$BIN/staged-loader" --config "$T/bad.ini" 2>"$T/l4.log" && fail "truncated model accepted"
grep -q "cannot stage" "$T/l4.log" || fail "no error message: $(cat $T/l4.log)"
"$BIN/staged-loader" --config "$T/bad.ini" --check-config | grep -q "config OK" || fail "check-config"
echo "loader test passed"

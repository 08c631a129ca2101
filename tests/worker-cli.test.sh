#!/bin/bash
# staged-worker eval / generate from the command line: eval writes the
# reference .logits layout and its figures match llama.cpp's for
# ref-llama.F32 (relative RMS <= 1e-3 at every prompt position, the same 16
# greedy tokens); generate reproduces the stories260K reference text;
# usage errors fail cleanly, and so does --backend cuda without a GPU.
source "$(dirname "$0")/lib.sh"
REF=$STAGED_MODELS/ref/ref-llama.F32
ST=$STAGED_MODELS/stories260K.gguf
[ -f "$REF.gguf" ] && [ -f "$REF.logits" ] && [ -f "$ST" ] || skip "reference models missing"
W=$BIN/staged-worker
PROMPT=5,17,300,1000,42,7,2048,99,123,4000,8,64,1,511,777,3333

"$W" eval "$REF.gguf" --tokens $PROMPT --gen 16 --logits "$T/out.logits" --threads 2 \
    || fail "eval failed"
python3 - "$T/out.logits" "$REF.logits" <<'PY' || fail "eval output differs from the reference"
import math, struct, sys
def load(p):
    b = open(p, 'rb').read()
    nv, np_, ng = struct.unpack_from('<3i', b, 0)
    n = (np_ + ng) * nv
    lg = struct.unpack_from('<%df' % n, b, 12)
    toks = struct.unpack_from('<%di' % ng, b, 12 + 4 * n)
    assert len(b) == 12 + 4 * n + 4 * ng, "file size"
    return nv, np_, ng, lg, toks
nv, np_, ng, a, ta = load(sys.argv[1])
rv, rp, rg, r, tr = load(sys.argv[2])
assert (nv, np_, ng) == (rv, rp, rg), "header %s vs %s" % ((nv, np_, ng), (rv, rp, rg))
assert ta == tr, "greedy tokens %s vs %s" % (ta, tr)
worst = 0
for p in range(np_ + ng):
    row = slice(p * nv, (p + 1) * nv)
    num = sum((x - y) ** 2 for x, y in zip(a[row], r[row]))
    den = sum(y * y for y in r[row])
    worst = max(worst, math.sqrt(num / den))
print("eval ref-llama.F32: worst relative RMS error %.6f over %d positions" % (worst, np_ + ng))
assert worst <= 1e-3
PY

out=$("$W" generate "$ST" --prompt "Once upon a time" --max-tokens 60 --temperature 0) \
    || fail "generate failed"
want=", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high."
case "$out" in "$want"*) ;; *) fail "generate: got '$out'" ;; esac
ids=$("$W" generate "$ST" --prompt-tokens 1,403,407,261,378 --max-tokens 5 --temperature 0 --ids)
[ "$ids" = "432 383 286 261 376" ] || fail "generate --ids: got '$ids'"
out=$("$W" generate "$ST" --prompt "Once upon a time" --max-tokens 60 --temperature 0 --stop " Lily")
[ "$out" = ", there was a little girl named" ] || fail "--stop: got '$out'"
a=$("$W" generate "$ST" --prompt "Once" --max-tokens 30 --seed 9 --temperature 0.9 --top-p 0.95)
b=$("$W" generate "$ST" --prompt "Once" --max-tokens 30 --seed 9 --temperature 0.9 --top-p 0.95)
[ "$a" = "$b" ] || fail "same seed, different text: '$a' vs '$b'"

"$W" eval "$ST" --tokens 1,2 --logits "$T/x" --gen -1 2>/dev/null; [ $? -eq 2 ] || fail "bad --gen accepted"
"$W" eval "$ST" --tokens 1,x --logits "$T/x" 2>/dev/null; [ $? -eq 2 ] || fail "bad --tokens accepted"
"$W" eval "$ST" --tokens 1,600 --logits "$T/x" 2>/dev/null; [ $? -eq 1 ] || fail "token >= n_vocab accepted"
"$W" eval "$ST" --tokens 1 --logits "$T/x" --backend nope 2>"$T/e"; [ $? -eq 1 ] || fail "unknown backend"
grep -q "unknown" "$T/e" || fail "unknown backend message: $(cat $T/e)"
# --backend cuda: works where a GPU is, else fails with a message naming cuda
"$W" eval "$ST" --tokens 1 --logits "$T/x" --backend cuda 2>"$T/e"
rc=$?
[ $rc -eq 0 ] || { [ $rc -eq 1 ] && grep -qi cuda "$T/e"; } || fail "--backend cuda: rc $rc, $(cat $T/e)"
echo "ok: eval matches llama.cpp, generate matches the stories260K reference"

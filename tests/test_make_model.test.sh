#!/bin/bash
# staged-make-model: tiny models of each architecture in f16 and q4_k_m are
# accepted by staged-gguf and read back within the quantizer's error bound
# (--check dequantizes with gpu_worker/quant.c); files are deterministic for a
# seed and any thread count; the qwen2.5-0.5b shape matches the tensor list,
# hyperparameters and parameter count of the real Qwen2.5-0.5B-Instruct GGUF
# (ollama's converter test data in $STAGED_MODELS/reference).
. "$(dirname "$0")/lib.sh"
MM=$BIN/staged-make-model
[ -x "$MM" ] && [ -x "$BIN/staged-gguf" ] || skip "build bin/staged-make-model and bin/staged-gguf first"
[ -f "$STAGED_MODELS/vocab/ggml-vocab-qwen2.gguf" ] || skip "no vocab files under $STAGED_MODELS"
export STAGED_MODELS

for shape in tiny-qwen2 tiny-llama tiny-qwen3; do
    arch=${shape#tiny-}
    for type in q4_k_m f16; do
        f=$T/$shape.$type.gguf
        "$MM" --shape $shape --type $type --seed 11 -o "$f" >/dev/null || fail "$shape $type: make-model failed"
        "$BIN/staged-gguf" "$f" >"$T/out" || { tail -n 3 "$T/out"; fail "$shape $type: staged-gguf rejected it"; }
        grep -q "^verdict: OK" "$T/out" || fail "$shape $type: no OK verdict"
        grep -q "^model: $arch, dim 256, 2 layers" "$T/out" || fail "$shape $type: $(grep ^model: "$T/out")"
        "$MM" --check "$f" >"$T/check" || { cat "$T/check"; fail "$shape $type: --check failed"; }
        cat "$T/check" | sed "s/^/$shape $type: /"
    done
done
# the mix: Q6_K embedding / attn_v / ffn_down, Q4_K elsewhere, F32 vectors
"$BIN/staged-gguf" "$T/tiny-llama.q4_k_m.gguf" >"$T/out.q" || fail "staged-gguf tiny-llama"
for want in 'token_embd.weight +Q6_K' 'output.weight +Q6_K' 'blk.1.attn_v.weight +Q6_K' \
            'blk.1.ffn_down.weight +Q6_K' 'blk.1.attn_q.weight +Q4_K' 'blk.1.ffn_up.weight +Q4_K' \
            'blk.1.ffn_norm.weight +F32'; do
    grep -Eq "^  $want" "$T/out.q" || fail "tiny-llama q4_k_m: no '$want'"
done
grep -q "tokenizer.ggml.pre .*\"llama-bpe\"" "$T/out.q" || fail "tiny-llama: tokenizer keys not copied"
grep -q "tokenizer.ggml.tokens .*string x 128256" "$T/out.q" || fail "tiny-llama: token count"

# a model vocabulary larger than the tokenizer's (as Qwen2.5-7B's 152064 rows):
# tokens and token types padded with [PADn]
"$MM" --shape tiny-qwen2 --type q8_0 --vocab 152064 -o "$T/pad.gguf" >/dev/null || fail "--vocab 152064"
"$BIN/staged-gguf" "$T/pad.gguf" >"$T/out.pad" || fail "padded vocab model rejected"
grep -q "tokenizer.ggml.tokens .*string x 152064" "$T/out.pad" || fail "tokens not padded"
grep -q "tokenizer.ggml.token_type .*i32 x 152064" "$T/out.pad" || fail "token types not padded"
grep -q "^model: qwen2, .*vocab 152064" "$T/out.pad" || fail "embedding rows not 152064"
grep -aq '\[PAD151936\]' "$T/pad.gguf" && grep -aq '\[PAD152063\]' "$T/pad.gguf" || fail "no [PADn] tokens"
"$MM" --check "$T/pad.gguf" | grep -q "Q8_0 .* ok" || fail "q8_0 check"
"$MM" --shape tiny-qwen2 --vocab 1000 -o "$T/x.gguf" >/dev/null 2>&1 && fail "--vocab below the token count accepted"

# deterministic: same seed, other thread count -> same bytes; other seed -> different
"$MM" --shape tiny-qwen2 --type q4_k_m --seed 11 --threads 1 -o "$T/again.gguf" >/dev/null || fail "make again"
cmp -s "$T/again.gguf" "$T/tiny-qwen2.q4_k_m.gguf" || fail "same seed, 1 vs 2 threads: files differ"
"$MM" --shape tiny-qwen2 --type q4_k_m --seed 12 -o "$T/other.gguf" >/dev/null || fail "make seed 12"
cmp -s "$T/other.gguf" "$T/tiny-qwen2.q4_k_m.gguf" && fail "seed 11 and 12 give the same file"

# a wrong seed in the metadata makes --check fail (the check can fail)
printf '\x63' | dd of="$T/other.gguf" bs=1 seek=$(grep -abo 'staged.make_model.seed' "$T/other.gguf" | head -1 | cut -d: -f1 | awk '{print $1 + 22 + 4}') conv=notrunc status=none
"$MM" --check "$T/other.gguf" >"$T/check" 2>&1 && fail "--check passed a file whose seed was changed"
grep -q OVER "$T/check" || fail "--check: no OVER line for the changed seed"

# qwen2.5-0.5b against the real file's converter data
REF=$STAGED_MODELS/reference/ollama-convert-testdata-Qwen2.5-0.5B-Instruct.json
if [ -f "$REF" ]; then
    "$MM" --plan --shape qwen2.5-0.5b --type f16 >"$T/plan" || fail "--plan failed"
    sed -n 's/^ *"\([a-z0-9_.]*\)": "[0-9a-f]\{64\}",\{0,1\}$/\1/p' "$REF" | grep -v '^tokenizer\.' | sort >"$T/ref-tensors"
    awk '$1 == "tensor" {print $2}' "$T/plan" | sort >"$T/our-tensors"
    [ "$(wc -l <"$T/ref-tensors")" -eq 290 ] || fail "reference: expected 290 tensors"
    diff "$T/ref-tensors" "$T/our-tensors" >/dev/null || fail "qwen2.5-0.5b tensor names differ from the real model"
    for key in general.architecture general.file_type general.parameter_count \
               general.quantization_version qwen2.attention.head_count \
               qwen2.attention.head_count_kv qwen2.attention.layer_norm_rms_epsilon \
               qwen2.block_count qwen2.context_length qwen2.embedding_length \
               qwen2.feed_forward_length qwen2.rope.freq_base; do
        want=$(sed -n "s/^ *\"$key\": \"\([^\"]*\)\".*/\1/p" "$REF")
        got=$(awk -v k="$key" '$1 == "kv" && $2 == k {print $3}' "$T/plan" | tr -d '"')
        [ -n "$want" ] && [ "$want" = "$got" ] || fail "qwen2.5-0.5b $key: ours '$got', real model '$want'"
    done
    echo "qwen2.5-0.5b: 290 tensor names and 12 metadata values match the real model"
fi

# every shape (the large ones without writing them): header valid for staged
while read -r shape arch dim layers; do
    for type in q4_k_m f16 q8_0; do
        "$MM" --plan --shape $shape --type $type >"$T/plan" 2>&1 || { tail -1 "$T/plan"; fail "$shape $type: --plan"; }
        grep -q "^valid $arch dim $dim layers $layers " "$T/plan" || fail "$shape $type: $(tail -1 "$T/plan")"
    done
done <<SHAPES
qwen2.5-0.5b qwen2 896 24
qwen2.5-1.5b qwen2 1536 28
qwen2.5-7b qwen2 3584 28
llama-3.2-1b llama 2048 16
qwen3-0.6b qwen3 1024 28
SHAPES
# published parameter counts: Qwen2.5 1.5B / 7B, Llama 3.2 1B, Qwen3 0.6B
for sp in qwen2.5-1.5b:1543714304 qwen2.5-7b:7615616512 llama-3.2-1b:1235814400 qwen3-0.6b:596049920; do
    got=$("$MM" --plan --shape ${sp%%:*} | awk '$2 == "general.parameter_count" {print $3}')
    [ "$got" = "${sp#*:}" ] || fail "${sp%%:*}: $got parameters, published ${sp#*:}"
done

# bad usage
"$MM" --shape no-such -o "$T/x.gguf" >/dev/null 2>&1; [ $? -eq 2 ] || fail "unknown shape: exit not 2"
"$MM" --shape tiny-qwen2 --type q9_9 -o "$T/x.gguf" >/dev/null 2>&1; [ $? -eq 1 ] || fail "unknown type: exit not 1"
[ -e "$T/x.gguf" ] && fail "a failed run left a file"
echo "ok"

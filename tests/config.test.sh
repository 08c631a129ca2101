#!/bin/bash
# Every program takes --config FILE and --check-config: a good file is
# accepted, a bad one is rejected with FILE:LINE, section and key, exit non-zero.
source "$(dirname "$0")/lib.sh"
write_config "$T/good.ini" "$STAGED_MODELS/stories260K.gguf"
cp "$T/good.ini" "$T/bad.ini"
printf '[worker]\ndevice = lots\n' >>"$T/bad.ini"
line=$(grep -n '^device = lots' "$T/bad.ini" | cut -d: -f1)
for p in staged-loader staged-tokenizer staged-worker staged-frontend staged-http staged-client \
    staged-gguf staged-ctl staged-loadgen staged-make-model; do
    [ -x "$BIN/$p" ] || fail "missing $BIN/$p"
    out=$("$BIN/$p" --check-config --config "$T/good.ini" 2>&1) || fail "$p rejects a good config: $out"
    grep -q "config OK" <<<"$out" || fail "$p: $out"
    out=$("$BIN/$p" --check-config --config "$T/bad.ini" 2>&1) && fail "$p accepts a bad config"
    grep -q "bad.ini:$line: \[worker\] device: 'lots' is not an integer" <<<"$out" || fail "$p: $out"
done
echo "10 programs: good config accepted, bad config rejected with file:line, section and key"

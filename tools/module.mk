# tools/: staged-make-model (random test models of real size) and the GGUF
# test tooling: test_gguf, the bad-GGUF corpus generator.
PROGRAMS += staged-make-model
staged-make-model_SRC := tools/make_model_main.c tools/make_model.c gpu_worker/quantize.c \
                         gpu_worker/quant.c

TESTS += test_gguf
test_gguf_SRC := tests/test_gguf.c tests/bad-gguf/corpus.c
# allocation fault injection (see test_gguf.c)
test_gguf_LIBS := -Wl,--wrap=malloc -Wl,--wrap=calloc -Wl,--wrap=realloc

# tests/bad-gguf/make-corpus DIR (the script) builds and runs this.
$(BUILD)/tests/bad-gguf/make-corpus: $(BUILD)/tests/bad-gguf/make_corpus.o \
                                     $(BUILD)/tests/bad-gguf/corpus.o $(CORE_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(CORE_LIB) $(CORE_LIBS) $(LDLIBS)

TESTS += test_quantize
test_quantize_SRC := tests/test_quantize.c gpu_worker/quantize.c gpu_worker/quant.c
gpu_worker/quantize_CFLAGS := -O3

BENCHES += bench-quantize
bench-quantize_SRC := tools/bench_quantize.c gpu_worker/quantize.c gpu_worker/quant.c

# staged - top-level build.
#
#   make              build every program into bin/ (CUDA parts when nvcc is present)
#   make test         build and run every test that needs no GPU
#   make SAN=1 test   the same under AddressSanitizer + UBSan (build/asan, bin-asan/)
#   make bench        CPU benchmarks
#   make fuzz         libFuzzer target for the GGUF reader (clang), bounded run
#   make deps         install the Debian packages the project needs (root)
#
# Each folder adds its programs and tests in its own module.mk:
#   PROGRAMS += staged-foo            foo_SRC := ...   (program sources)
#   staged-foo_SRC := ...             staged-foo_LIBS := -lbar
#   TESTS += test_foo                 test_foo_SRC := ...   test_foo_LIBS := ...
# Every program and test links build/libstaged.a (common/, conf/, shm/).

CC      ?= cc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
SAN     ?=
NO_CUDA ?=

# The sanitizer build keeps -O2: the floating-point code must round exactly as
# in the release build (GCC forms FMAs only from -O2 on), or the tests of
# bit-identical results would compare two different programs.
ifeq ($(SAN),1)
BUILD    := build/asan
BIN      := bin-asan
OPT      := -O2 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDSAN    := -fsanitize=address,undefined
NO_CUDA  := 1
else
BUILD    := build/rel
BIN      := bin
OPT      := -O2
LDSAN    :=
endif

ARCHFLAGS ?= -mavx2 -mfma -mf16c
CFLAGS  := -std=gnu11 -g $(OPT) $(ARCHFLAGS) -Wall -Wextra -Wno-unused-parameter -pthread \
           -MMD -MP -I. -D_GNU_SOURCE $(EXTRA_CFLAGS)
LDFLAGS := -pthread $(LDSAN) $(EXTRA_LDFLAGS)
LDLIBS  := -lm

HAVE_CUDA := $(if $(NO_CUDA),,$(if $(NVCC),1,))
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

PROGRAMS :=
TESTS    :=
BENCHES  :=

CORE_SRC := $(wildcard common/*.c) $(wildcard conf/*.c) $(wildcard shm/*.c)
CORE_LIB := $(BUILD)/libstaged.a
CORE_LIBS := -lzmq -linih -ljansson -lxxhash

all:

include $(sort $(wildcard */module.mk))
# gpu_worker/cuda/ adds CUDA objects to other folders' programs: after them.
include gpu_worker/cuda/module.mk

define program_rules
$(BIN)/$(1): $$(patsubst %.c,$(BUILD)/%.o,$$(filter %.c,$$($(1)_SRC))) $$($(1)_DEPS) $(CORE_LIB)
	@mkdir -p $$(@D)
	$$(CC) $$(LDFLAGS) -o $$@ $$(filter %.o %.a,$$^) $(CORE_LIB) $$($(1)_LIBS) $(CORE_LIBS) $$(LDLIBS)
endef

define test_rules
$(BUILD)/tests/$(1): $$(patsubst %.c,$(BUILD)/%.o,$$(filter %.c,$$($(1)_SRC))) $$($(1)_DEPS) $(CORE_LIB)
	@mkdir -p $$(@D)
	$$(CC) $$(LDFLAGS) -o $$@ $$(filter %.o %.a,$$^) $(CORE_LIB) $$($(1)_LIBS) $(CORE_LIBS) -lcmocka $$(LDLIBS)
endef

$(foreach p,$(PROGRAMS) $(BENCHES),$(eval $(call program_rules,$(p))))
$(foreach t,$(TESTS),$(eval $(call test_rules,$(t))))

all: $(addprefix $(BIN)/,$(PROGRAMS))

$(CORE_LIB): $(patsubst %.c,$(BUILD)/%.o,$(CORE_SRC))
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $($(*)_CFLAGS) -c -o $@ $<

test: all $(addprefix $(BUILD)/tests/,$(TESTS))
	@BUILD=$(BUILD) BIN=$(BIN) tests/run-tests $(addprefix $(BUILD)/tests/,$(TESTS))

bench: all $(addprefix $(BIN)/,$(BENCHES))
	@echo "== CPU backend (scripts/cpu-bench) =="
	@scripts/cpu-bench
	@echo "== tokenizer (bench-tokenizer) =="
	@$(BIN)/bench-tokenizer
	@echo "== loader staging (scripts/bench-staging) =="
	@scripts/bench-staging

FUZZ_TIME ?= 90
fuzz:
	@mkdir -p build/fuzz/corpus
	clang -g -O1 -I. -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined \
	    -o build/fuzz/fuzz_gguf tests/fuzz_gguf.c common/gguf.c common/gguf_write.c \
	    common/err.c common/model.c
	tests/bad-gguf/make-corpus build/fuzz/seed >/dev/null
	@build/fuzz/fuzz_gguf -max_total_time=$(FUZZ_TIME) -max_len=65536 -timeout=10 \
	    -rss_limit_mb=2048 -artifact_prefix=build/fuzz/ build/fuzz/corpus build/fuzz/seed \
	    >build/fuzz/fuzz.log 2>&1; rc=$$?; tail -n 12 build/fuzz/fuzz.log; \
	    if [ $$rc -ne 0 ]; then echo "fuzz: FINDING (exit $$rc), see build/fuzz/fuzz.log"; \
	    exit 1; fi; echo "fuzz: no findings in $(FUZZ_TIME) s"

deps:
	scripts/install-deps

clean:
	rm -rf build bin bin-asan

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')

.PHONY: all test bench fuzz deps clean format

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

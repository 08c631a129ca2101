# gpu_worker/: runs the model. CPU backend, quantized kernels, sampling, CLI,
# serving loop. (gpu_worker/cuda/module.mk adds the CUDA backend.)
WORKER_CPU_SRC := gpu_worker/quant.c gpu_worker/kernels.c gpu_worker/pool.c \
                  gpu_worker/cpu_backend.c gpu_worker/sample.c

PROGRAMS += staged-worker
# recursive (=): TOK_LIB_SRC comes from tokenizer/module.mk, included later
staged-worker_SRC = gpu_worker/main.c gpu_worker/cli.c gpu_worker/registry.c \
                    gpu_worker/serve_main.c gpu_worker/server.c $(WORKER_CPU_SRC) $(TOK_LIB_SRC)
staged-worker_LIBS += -lpcre2-8

gpu_worker/kernels_CFLAGS := -O3
gpu_worker/quant_CFLAGS := -O3

TESTS += test_quant
test_quant_SRC := tests/test_quant.c gpu_worker/quant.c gpu_worker/kernels.c

TESTS += test_sample
test_sample_SRC := tests/test_sample.c gpu_worker/sample.c

TESTS += test_cpu_backend
test_cpu_backend_SRC := tests/test_cpu_backend.c $(WORKER_CPU_SRC)

BENCHES += bench-worker
bench-worker_SRC := gpu_worker/bench_main.c $(WORKER_CPU_SRC)

TESTS += test_pool
test_pool_SRC := tests/test_pool.c gpu_worker/pool.c

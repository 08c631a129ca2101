# gpu_worker/: runs the model. CPU backend, quantized kernels, sampling, CLI.
WORKER_CPU_SRC := gpu_worker/quant.c

TESTS += test_quant
test_quant_SRC := tests/test_quant.c gpu_worker/quant.c

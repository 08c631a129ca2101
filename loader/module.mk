# loader/: stages the model into shared memory, uploads it to the GPU, serves the manifest.
PROGRAMS += staged-loader
staged-loader_SRC := loader/main.c loader/ctl.c loader/gpu_upload_none.c

TESTS += test_gpu_layout
test_gpu_layout_SRC := tests/test_gpu_layout.c gpu_worker/quant.c

# a worker refuses a loader's device copy in another layout (runs bin/staged-worker)
TESTS += test_worker_layout
test_worker_layout_SRC := tests/test_worker_layout.c

# gpu_worker/cuda/: the CUDA backend of the worker, and the loader's GPU upload
# (loader/gpu_upload.cu) and device layout (loader/gpu_layout.cu, in both). Included by the top Makefile after every */module.mk,
# so the += below add to what gpu_worker/ and loader/ define.
#
# With nvcc (HAVE_CUDA): .cu files compile with nvcc for sm_90 (+ compute_90
# PTX), cudart is linked statically, cuBLAS dynamically, and every C file sees
# -DSTAGED_CUDA=1. Without: gpu_worker/cuda/cuda_none.c gives
# cuda_backend_ops() == NULL and test_cuda skips.

CUDA_CU_OBJ := $(BUILD)/gpu_worker/cuda/cuda_backend.cu.o $(BUILD)/gpu_worker/cuda/kernels.cu.o \
               $(BUILD)/gpu_worker/cuda/mmq.cu.o $(BUILD)/gpu_worker/cuda/exact.cu.o \
               $(BUILD)/gpu_worker/cuda/kvpool.cu.o $(BUILD)/gpu_worker/cuda/mvq.cu.o \
               $(BUILD)/gpu_worker/cuda/topk.cu.o $(BUILD)/loader/gpu_layout.cu.o
GPU_UPLOAD_OBJ := $(BUILD)/loader/gpu_upload.cu.o $(BUILD)/loader/gpu_layout.cu.o
CUDA_HDRS := $(wildcard gpu_worker/cuda/*.cuh gpu_worker/cuda/*.h) gpu_worker/backend.h \
             loader/gpu_upload.h loader/gpu_layout.h common/model.h common/gguf.h common/err.h shm/seg.h \
             gpu_worker/sample.h
NVCCFLAGS ?= -O3 -lineinfo -std=c++17 \
             -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
CUDA_LINK := -L$(CUDA_HOME)/lib64 -lcublas -lcudart_static -ldl -lrt -lstdc++

staged-worker_SRC += gpu_worker/cuda/cuda_none.c

# Objects whose content depends on -DSTAGED_CUDA are rebuilt when HAVE_CUDA
# changes (e.g. a NO_CUDA=1 build in a tree built with CUDA).
CUDA_FLAG_STAMP := $(BUILD)/.staged-cuda-$(if $(HAVE_CUDA),on,off)
$(CUDA_FLAG_STAMP):
	@mkdir -p $(@D) && rm -f $(BUILD)/.staged-cuda-* && touch $@
$(BUILD)/loader/gpu_upload_none.o $(BUILD)/gpu_worker/cuda/cuda_none.o \
$(BUILD)/tests/test_cuda.o: $(CUDA_FLAG_STAMP)

TESTS += test_cuda
test_cuda_SRC := tests/test_cuda.c gpu_worker/cuda/cuda_none.c gpu_worker/quant.c gpu_worker/sample.c \
                 gpu_worker/kernels.c gpu_worker/quantize.c

ifeq ($(HAVE_CUDA),1)
CFLAGS += -DSTAGED_CUDA=1

$(BUILD)/%.cu.o: %.cu $(CUDA_HDRS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -I. -D_GNU_SOURCE -DSTAGED_CUDA=1 \
	    -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-Wno-unknown-pragmas -c -o $@ $<

staged-worker_DEPS += $(CUDA_CU_OBJ)
staged-worker_LIBS += $(CUDA_LINK)
staged-loader_DEPS += $(GPU_UPLOAD_OBJ)
staged-loader_LIBS += $(CUDA_LINK)
test_cuda_DEPS := $(CUDA_CU_OBJ) $(GPU_UPLOAD_OBJ)
test_cuda_LIBS := $(CUDA_LINK)

BENCHES += bench-cuda
bench-cuda_SRC := gpu_worker/cuda/bench_cuda.c gpu_worker/sample.c
bench-cuda_DEPS := $(CUDA_CU_OBJ) $(GPU_UPLOAD_OBJ)
bench-cuda_LIBS := $(CUDA_LINK)

# the GPU's read bandwidth and kernel-boundary cost (scripts/gpu-bench)
BENCHES += bench-ceilings
bench-ceilings_DEPS := $(BUILD)/gpu_worker/cuda/bench_ceilings.cu.o
bench-ceilings_LIBS := $(CUDA_LINK)

# the CUPTI tracer of scripts/gpu-timeline (built by gpu-check prepare bench,
# whose bundle-libs puts libcupti into .devlibs beside the other libraries)
KTRACE_LIB := $(BUILD)/ktrace/libktrace.so
$(KTRACE_LIB): gpu_worker/cuda/ktrace.c
	@mkdir -p $(@D)
	$(CC) -O2 -Wall -Wextra -shared -fPIC -I$(CUDA_HOME)/include -o $@ $< \
	    -L$(CUDA_HOME)/lib -L$(CUDA_HOME)/lib64 -lcupti -Wl,-rpath,'$$ORIGIN'
endif

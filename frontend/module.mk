# frontend/: the client-facing stage.
PROGRAMS += staged-frontend
staged-frontend_SRC := frontend/main.c frontend/fe.c frontend/request.c gpu_worker/sample.c

# A load generator over the raw client protocol (tests, recovery timing).
PROGRAMS += staged-loadgen
staged-loadgen_SRC := frontend/loadgen.c

TESTS += test_frontend
test_frontend_SRC := tests/test_frontend.c frontend/request.c gpu_worker/sample.c

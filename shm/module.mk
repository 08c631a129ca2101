# shm/: the shared-memory segment format (built into libstaged.a).
TESTS += test_seg
test_seg_SRC := tests/test_seg.c

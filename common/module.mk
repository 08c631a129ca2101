# common/: the GGUF inspection tool.
PROGRAMS += staged-gguf
staged-gguf_SRC := common/gguf_main.c

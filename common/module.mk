# common/: the GGUF inspection tool.
PROGRAMS += staged-gguf
staged-gguf_SRC := common/gguf_main.c
PROGRAMS += staged-ctl
staged-ctl_SRC := common/ctl_main.c

# tokenizer/: the tokenizer stage and its library (vocab, encoders, chat templates, detokenizer).
TOK_LIB_SRC := tokenizer/vocab.c tokenizer/spm.c tokenizer/bpe.c tokenizer/pretok.c \
               tokenizer/detok.c tokenizer/chat.c
PROGRAMS += staged-tokenizer
staged-tokenizer_SRC := tokenizer/main.c tokenizer/server.c $(TOK_LIB_SRC)
staged-tokenizer_LIBS := -lpcre2-8
TESTS += test_tokenizer
test_tokenizer_SRC := tests/test_tokenizer.c $(TOK_LIB_SRC)
# the test injects allocation failures through these wrappers
test_tokenizer_LIBS := -lpcre2-8 -Wl,--wrap=malloc -Wl,--wrap=calloc -Wl,--wrap=realloc
TESTS += test_tokenizer_server
test_tokenizer_server_SRC := tests/test_tokenizer_server.c tokenizer/server.c $(TOK_LIB_SRC)
test_tokenizer_server_LIBS := -lpcre2-8
BENCHES += bench-tokenizer
bench-tokenizer_SRC := tokenizer/bench.c tokenizer/server.c $(TOK_LIB_SRC)
bench-tokenizer_LIBS := -lpcre2-8

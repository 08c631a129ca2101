# http/: the OpenAI-compatible HTTP gateway, and the frontend client library
# (frontend/client.c) with its command-line client.
PROGRAMS += staged-client
staged-client_SRC := frontend/client_main.c frontend/client.c
TESTS += test_client
test_client_SRC := tests/test_client.c frontend/client.c
PROGRAMS += staged-http
staged-http_SRC := http/main.c http/gateway.c http/openai.c http/metrics.c frontend/client.c
staged-http_LIBS := -lmicrohttpd
TESTS += test_openai
test_openai_SRC := tests/test_openai.c http/openai.c
TESTS += test_metrics
test_metrics_SRC := tests/test_metrics.c http/metrics.c
TESTS += test_gateway
test_gateway_SRC := tests/test_gateway.c http/gateway.c http/openai.c http/metrics.c frontend/client.c
test_gateway_LIBS := -lmicrohttpd

# frontend/: the client-facing stage.
PROGRAMS += staged-frontend
staged-frontend_SRC := frontend/main.c frontend/fe.c frontend/request.c

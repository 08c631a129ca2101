/*
 * err.h - the error codes every staged module returns.
 *
 * Action functions return 0 on success or one of these negative codes.
 * Predicates return bool. A function that fails because of outside input
 * (a model file, a config file, a message) also writes a human-readable
 * message naming what is wrong and where into a caller-supplied buffer
 * (see struct st_errbuf); the code says which kind of failure it was.
 */
#ifndef STAGED_ERR_H
#define STAGED_ERR_H

#include <stddef.h>

enum st_err {
    ST_OK = 0,
    ST_ENOMEM = -1,     /* allocation failed */
    ST_EIO = -2,        /* read/write/open failed (errno kept by caller's message) */
    ST_EFORMAT = -3,    /* malformed input: file, message, config */
    ST_EUNSUPPORTED = -4, /* well-formed but not something staged serves */
    ST_ERANGE = -5,     /* a value or count out of its allowed range */
    ST_ENOTFOUND = -6,  /* key, tensor, stage or file absent */
    ST_EEXIST = -7,     /* duplicate */
    ST_ESTATE = -8,     /* operation not valid in the current state */
    ST_ETIMEOUT = -9,   /* a peer did not answer in time */
    ST_EBUSY = -10,     /* queue full / overloaded */
    ST_ECANCELLED = -11,/* request cancelled */
    ST_EDEVICE = -12,   /* GPU / backend failure */
    ST_EINVAL = -13,    /* invalid argument from a caller */
    ST_EINTEGRITY = -14,/* checksum or identity mismatch */
};

/* A short name for an error code ("ENOMEM", ...). Never NULL. */
const char *st_strerror(int err);

/*
 * A message buffer filled by functions that reject outside input.
 * Functions write at most sizeof(msg)-1 bytes and always NUL-terminate.
 */
struct st_errbuf {
    char msg[512];
};

/* printf-style set of the message; returns err so callers can
 * `return st_errf(eb, ST_EFORMAT, "...")`. eb may be NULL. */
int st_errf(struct st_errbuf *eb, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif

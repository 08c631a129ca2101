/*
 * log.h - leveled logging for every staged process.
 *
 * One line per event on stderr (or the file set with log_open):
 *   2026-11-22T04:33:08.123Z INFO  loader: staged 48 tensors
 * The macros test the level before formatting, so disabled debug lines cost
 * one comparison. Thread-safe (one write(2) per line).
 */
#ifndef STAGED_LOG_H
#define STAGED_LOG_H

#include <stdbool.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

extern enum log_level log_min_level;

/* Set the process name printed on every line (static string, not copied). */
void log_set_name(const char *name);
/* Parse "debug" | "info" | "warn" | "error"; returns false if unknown. */
bool log_parse_level(const char *s, enum log_level *out);
/* Append log lines to path instead of stderr; returns 0 or ST_EIO. */
int log_open(const char *path);

void log_write(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_AT(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((lvl) >= log_min_level) log_write((lvl), __VA_ARGS__);                                 \
    } while (0)
#define log_debug(...) LOG_AT(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) LOG_AT(LOG_INFO, __VA_ARGS__)
#define log_warn(...) LOG_AT(LOG_WARN, __VA_ARGS__)
#define log_error(...) LOG_AT(LOG_ERROR, __VA_ARGS__)

#endif

#include "ready.h"

#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int ready_signal(void)
{
    return ready_signal_env("STAGED_READY_FILE");
}

int ready_signal_env(const char *var)
{
    const char *path = getenv(var);
    if (!path || !*path) return 0;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return ST_EIO;
    fprintf(f, "%d\n", (int)getpid());
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return ST_EIO;
    }
    return 0;
}

#include "fault.h"

#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

bool fault_fire(const char *what)
{
    const char *mark = getenv("STAGED_FAULT_MARK");
    if (mark && *mark) {
        if (access(mark, F_OK) == 0) return false;
        FILE *f = fopen(mark, "w");
        if (f) fclose(f);
    }
    log_error("fault injection: %s", what);
    return true;
}

#include "err.h"

#include <stdarg.h>
#include <stdio.h>

const char *st_strerror(int err)
{
    switch (err) {
    case ST_OK: return "OK";
    case ST_ENOMEM: return "ENOMEM";
    case ST_EIO: return "EIO";
    case ST_EFORMAT: return "EFORMAT";
    case ST_EUNSUPPORTED: return "EUNSUPPORTED";
    case ST_ERANGE: return "ERANGE";
    case ST_ENOTFOUND: return "ENOTFOUND";
    case ST_EEXIST: return "EEXIST";
    case ST_ESTATE: return "ESTATE";
    case ST_ETIMEOUT: return "ETIMEOUT";
    case ST_EBUSY: return "EBUSY";
    case ST_ECANCELLED: return "ECANCELLED";
    case ST_EDEVICE: return "EDEVICE";
    case ST_EINVAL: return "EINVAL";
    case ST_EINTEGRITY: return "EINTEGRITY";
    }
    return "EUNKNOWN";
}

int st_errf(struct st_errbuf *eb, int err, const char *fmt, ...)
{
    if (eb) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(eb->msg, sizeof(eb->msg), fmt, ap);
        va_end(ap);
    }
    return err;
}

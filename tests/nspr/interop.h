/* Shared by the NSPR peers of tests/test_nspr.py: the byte patterns both sides
 * check, and error reporting.  The pattern formulas are repeated in Python in
 * test_nspr.py; any drift between the two makes every interop test fail. */
#ifndef ANONSHM_TEST_INTEROP_H
#define ANONSHM_TEST_INTEROP_H

#include <stdio.h>
#include <stdlib.h>

#include "prerror.h"

/* Mixing in i >> 8 keeps the pattern from repeating every 256 bytes, so a
 * window mapped at the wrong page offset cannot pass for the right one. */
static inline unsigned char pattern_byte(size_t i, unsigned seed)
{
    return (unsigned char)((i ^ (i >> 8)) * 7u + seed);
}

static inline unsigned char answer_byte(size_t i, unsigned seed)
{
    return (unsigned char)((i ^ (i >> 8)) * 13u + seed + 101u);
}

static inline void fill(unsigned char *buf, size_t size, unsigned seed, int answer)
{
    for (size_t i = 0; i < size; i++)
        buf[i] = answer ? answer_byte(i, seed) : pattern_byte(i, seed);
}

/* Returns the first offset that differs, or size when all match. */
static inline size_t mismatch(const unsigned char *buf, size_t size, unsigned seed, int answer)
{
    for (size_t i = 0; i < size; i++)
        if (buf[i] != (answer ? answer_byte(i, seed) : pattern_byte(i, seed)))
            return i;
    return size;
}

static inline void nspr_die(const char *prog, const char *what)
{
    fprintf(stderr, "%s: %s failed: NSPR error %d (%s), errno %d\n", prog, what,
            (int)PR_GetError(), PR_ErrorToName(PR_GetError()), (int)PR_GetOSError());
    exit(2);
}

#endif

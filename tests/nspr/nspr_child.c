/* An NSPR child for tests/test_nspr.py: maps the memories an anonshm parent
 * handed it, checks the parent's pattern and answers through the memory.
 *
 * usage: nspr_child (SOURCE KEY SIZE ACTION SEED)...
 *   SOURCE  token:   KEY is a PR_ExportFileMapAsString token (second protocol)
 *           inherit: KEY is a name for PR_GetInheritedFD (first protocol)
 *   ACTION  write:    map READWRITE, check the pattern, write the answer
 *           read:     map READONLY, check the pattern
 *           readonly: as read, then show that a READWRITE map is refused
 *           private:  map WRITECOPY, check the pattern, write the answer
 *                     and see it in this map only
 *           absent:   (inherit) PR_GetInheritedFD must find no such name
 * Exit status 0 when every check passed; the findings go to stdout.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nspr.h"
#include "prshma.h"
#include "private/pprio.h"

#include "interop.h"

static const char *prog = "nspr_child";

static PRFileMapProtect prot_for(const char *action)
{
    if (strcmp(action, "write") == 0)
        return PR_PROT_READWRITE;
    if (strcmp(action, "private") == 0)
        return PR_PROT_WRITECOPY;
    return PR_PROT_READONLY;
}

/* Tries the writable shared map that a read-only handoff must refuse. */
static int writable_map_refused(const char *source, const char *key, PRFileDesc *fd,
                                PRUint32 size)
{
    PRFileMap *fm;
    if (strcmp(source, "token") == 0) {
        /* NSPR trusts the token's prot: ask READWRITE of the same descriptor. */
        char token[PR_FILEMAP_STRING_BUFSIZE];
        long osfd;
        if (sscanf(key, "%ld:", &osfd) != 1) {
            fprintf(stderr, "%s: cannot read the fd of token %s\n", prog, key);
            exit(2);
        }
        snprintf(token, sizeof token, "%ld:%d", osfd, (int)PR_PROT_READWRITE);
        fm = PR_ImportFileMapFromString(token);
        printf("%s: import %s as READWRITE: %s\n", key, token, fm ? "accepted" : "refused");
    } else {
        fm = PR_CreateFileMap(fd, size, PR_PROT_READWRITE);
        printf("%s: PR_CreateFileMap READWRITE: %s\n", key, fm ? "accepted" : "refused");
    }
    if (fm == NULL)
        return 1;
    void *addr = PR_MemMap(fm, 0, size);
    printf("%s: PR_MemMap READWRITE: %s (%s)\n", key, addr ? "mapped" : "refused",
           addr ? "-" : PR_ErrorToName(PR_GetError()));
    if (addr != NULL)
        PR_MemUnmap(addr, size);
    PR_CloseFileMap(fm);
    return addr == NULL;
}

static int handle(const char *source, const char *key, PRUint32 size, const char *action,
                  unsigned seed)
{
    PRFileDesc *fd = NULL;
    PRFileMap *fm;
    int ok = 1;

    if (strcmp(source, "token") == 0) {
        fm = PR_ImportFileMapFromString(key);
        if (fm == NULL)
            nspr_die(prog, "PR_ImportFileMapFromString");
    } else {
        fd = PR_GetInheritedFD(key);
        if (strcmp(action, "absent") == 0) {
            printf("%s: absent: %s\n", key, fd ? "FOUND" : "not found");
            return fd == NULL;
        }
        if (fd == NULL)
            nspr_die(prog, "PR_GetInheritedFD");
        PRFileInfo64 info;
        if (PR_GetOpenFileInfo64(fd, &info) != PR_SUCCESS)
            nspr_die(prog, "PR_GetOpenFileInfo64");
        printf("%s: fd=%ld size=%lld\n", key, (long)PR_FileDesc2NativeHandle(fd),
               (long long)info.size);
        /* A size above the file's makes PR_CreateFileMap grow the file, which a
         * sealed memfd refuses: the parent tells the exact size. */
        fm = PR_CreateFileMap(fd, size, prot_for(action));
        if (fm == NULL)
            nspr_die(prog, "PR_CreateFileMap");
    }

    unsigned char *buf = PR_MemMap(fm, 0, size);
    if (buf == NULL)
        nspr_die(prog, "PR_MemMap");
    size_t bad = mismatch(buf, size, seed, 0);
    if (bad != size) {
        printf("%s: pattern differs at offset %zu\n", key, bad);
        ok = 0;
    } else if (strcmp(action, "write") == 0 || strcmp(action, "private") == 0) {
        fill(buf, size, seed, 1);
        if (mismatch(buf, size, seed, 1) != size) {
            printf("%s: own answer does not read back\n", key);
            ok = 0;
        }
    }
    if (PR_MemUnmap(buf, size) != PR_SUCCESS)
        nspr_die(prog, "PR_MemUnmap");
    if (ok && strcmp(action, "readonly") == 0)
        ok = writable_map_refused(source, key, fd, size);
    PR_CloseFileMap(fm);
    if (fd != NULL)
        PR_Close(fd);
    printf("%s: %s %s\n", key, action, ok ? "ok" : "FAILED");
    return ok;
}

int main(int argc, char **argv)
{
    int ok = 1;

    /* A hung child must not hang the test run. */
    alarm(20);
    if (argc < 6 || (argc - 1) % 5 != 0) {
        fprintf(stderr, "usage: %s (SOURCE KEY SIZE ACTION SEED)...\n", prog);
        return 2;
    }
    PR_Init(PR_USER_THREAD, PR_PRIORITY_NORMAL, 0);
    for (int i = 1; i < argc; i += 5) {
        unsigned long size = strtoul(argv[i + 2], NULL, 10);
        unsigned seed = (unsigned)strtoul(argv[i + 4], NULL, 10);
        ok &= handle(argv[i], argv[i + 1], (PRUint32)size, argv[i + 3], seed);
    }
    fflush(stdout);
    return ok ? 0 : 1;
}

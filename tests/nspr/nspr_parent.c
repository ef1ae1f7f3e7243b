/* An NSPR parent for tests/test_nspr.py: makes anonymous memories the NSPR way,
 * writes a pattern, hands them to a child and checks what the child left.
 *
 * usage: nspr_parent DIR SIZE PROT SOURCE NAMES EXPECT PROGRAM [ARG...]
 *   DIR     where PR_OpenAnonFileMap puts its backing files
 *   SIZE    bytes per memory
 *   PROT    the PRFileMapProtect of the exported token (0, 1 or 2)
 *   SOURCE  token:   append one PR_ExportFileMapAsString token per memory to
 *                    the child's argv (second protocol)
 *           inherit: pass each memory's descriptor under its name with
 *                    PR_ProcessAttrSetInheritableFD (first protocol, the way
 *                    NSPR can actually do it)
 *   NAMES   comma-separated, one memory each; memory i has pattern seed i+1
 *   EXPECT  answer:  the child must have overwritten the pattern
 *           pattern: the child must have left the pattern alone
 * Exit status 0 when the child exited 0 and every memory holds EXPECT.
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

#define MAX_MEMORIES 8

static const char *prog = "nspr_parent";

/* A PRFileDesc of its own for the descriptor behind an anonymous file map.
 * NSPR keeps the map's PRFileDesc private; the exported token is the only
 * public way to learn the number.  Importing a dup keeps the two PRFileDescs
 * from closing one number twice. */
static PRFileDesc *own_desc(PRFileMap *fm)
{
    char token[PR_FILEMAP_STRING_BUFSIZE];
    int osfd;
    if (PR_ExportFileMapAsString(fm, sizeof token, token) != PR_SUCCESS)
        nspr_die(prog, "PR_ExportFileMapAsString");
    if (sscanf(token, "%d:", &osfd) != 1) {
        fprintf(stderr, "%s: unexpected token %s\n", prog, token);
        exit(2);
    }
    int copy = dup(osfd);
    if (copy < 0) {
        perror("dup");
        exit(2);
    }
    PRFileDesc *fd = PR_ImportFile(copy);
    if (fd == NULL)
        nspr_die(prog, "PR_ImportFile");
    return fd;
}

int main(int argc, char **argv)
{
    PRFileMap *maps[MAX_MEMORIES], *exported[MAX_MEMORIES] = {0};
    PRFileDesc *descs[MAX_MEMORIES] = {0};
    unsigned char *bufs[MAX_MEMORIES];
    char tokens[MAX_MEMORIES][PR_FILEMAP_STRING_BUFSIZE];
    char *names[MAX_MEMORIES];
    int count = 0, ok = 1;

    alarm(20);
    if (argc < 8) {
        fprintf(stderr, "usage: %s DIR SIZE PROT SOURCE NAMES EXPECT PROGRAM [ARG...]\n", prog);
        return 2;
    }
    const char *dir = argv[1];
    PRUint32 size = (PRUint32)strtoul(argv[2], NULL, 10);
    PRFileMapProtect prot = (PRFileMapProtect)atoi(argv[3]);
    int by_token = strcmp(argv[4], "token") == 0;
    int want_answer = strcmp(argv[6], "answer") == 0;
    char **child_args = argv + 7;
    int child_argc = argc - 7;

    PR_Init(PR_USER_THREAD, PR_PRIORITY_NORMAL, 0);
    for (char *name = strtok(argv[5], ","); name; name = strtok(NULL, ",")) {
        if (count == MAX_MEMORIES) {
            fprintf(stderr, "%s: at most %d memories\n", prog, MAX_MEMORIES);
            return 2;
        }
        names[count++] = name;
    }

    PRProcessAttr *attr = PR_NewProcessAttr();
    if (attr == NULL)
        nspr_die(prog, "PR_NewProcessAttr");
    for (int i = 0; i < count; i++) {
        maps[i] = PR_OpenAnonFileMap(dir, size, PR_PROT_READWRITE);
        if (maps[i] == NULL)
            nspr_die(prog, "PR_OpenAnonFileMap");
        bufs[i] = PR_MemMap(maps[i], 0, size);
        if (bufs[i] == NULL)
            nspr_die(prog, "PR_MemMap");
        fill(bufs[i], size, (unsigned)i + 1, 0);

        if (by_token) {
            exported[i] = maps[i];
            if (prot != PR_PROT_READWRITE) {
                /* A token carries the prot of the map it was exported from. */
                descs[i] = own_desc(maps[i]);
                exported[i] = PR_CreateFileMap(descs[i], size, prot);
                if (exported[i] == NULL)
                    nspr_die(prog, "PR_CreateFileMap");
            }
            if (PR_ExportFileMapAsString(exported[i], sizeof tokens[i], tokens[i]) != PR_SUCCESS)
                nspr_die(prog, "PR_ExportFileMapAsString");
            printf("token %s %s\n", names[i], tokens[i]);
        } else {
            if (PR_ProcessAttrSetInheritableFileMap(attr, maps[i], names[i]) == PR_SUCCESS)
                printf("PR_ProcessAttrSetInheritableFileMap: succeeded\n");
            else
                printf("PR_ProcessAttrSetInheritableFileMap: %s\n",
                       PR_ErrorToName(PR_GetError()));
            descs[i] = own_desc(maps[i]);
            if (PR_SetFDInheritable(descs[i], PR_TRUE) != PR_SUCCESS)
                nspr_die(prog, "PR_SetFDInheritable");
            if (PR_ProcessAttrSetInheritableFD(attr, descs[i], names[i]) != PR_SUCCESS)
                nspr_die(prog, "PR_ProcessAttrSetInheritableFD");
            printf("inherit %s fd=%ld\n", names[i], (long)PR_FileDesc2NativeHandle(descs[i]));
        }
    }

    char **args = calloc((size_t)child_argc + (size_t)count + 1, sizeof *args);
    if (args == NULL)
        return 2;
    memcpy(args, child_args, (size_t)child_argc * sizeof *args);
    for (int i = 0; by_token && i < count; i++)
        args[child_argc + i] = tokens[i];
    fflush(stdout);
    PRProcess *child = PR_CreateProcess(args[0], args, NULL, attr);
    if (child == NULL)
        nspr_die(prog, "PR_CreateProcess");
    PRInt32 status = -1;
    if (PR_WaitProcess(child, &status) != PR_SUCCESS)
        nspr_die(prog, "PR_WaitProcess");
    printf("child exit %d\n", (int)status);
    ok = status == 0;

    for (int i = 0; i < count; i++) {
        size_t bad = mismatch(bufs[i], size, (unsigned)i + 1, want_answer);
        printf("%s: %s %s", names[i], want_answer ? "answer" : "pattern",
               bad == size ? "ok\n" : "DIFFERS at offset ");
        if (bad != size) {
            printf("%zu\n", bad);
            ok = 0;
        }
        PR_MemUnmap(bufs[i], size);
        if (exported[i] != NULL && exported[i] != maps[i])
            PR_CloseFileMap(exported[i]);
        if (descs[i] != NULL)
            PR_Close(descs[i]);
        PR_CloseFileMap(maps[i]);
    }
    PR_DestroyProcessAttr(attr);
    free(args);
    fflush(stdout);
    return ok ? 0 : 1;
}

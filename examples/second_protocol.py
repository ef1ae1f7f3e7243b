"""NSPR's second protocol: the parent exports a string and starts the child by its own means.

The seed's pseudo-code, line for line, as one script that plays both parts::

    python examples/second_protocol.py          # the server; it starts the client

Server (NSPR)                                   anonshm
  fm = PR_OpenAnonFileMap(dir, size, prot)      AnonymousMemory(size)
  fmstring = PR_ExportFileMapAsString(fm)       fm.export() / for_child()  -> "<fd>:<prot>"
  addr = PR_MemMap(fm)                          fm.map()
  ... its own magic to create the child ...     with fm.for_child() as (fmstring, options):
                                                    subprocess.run([..., fmstring], **options)
  PR_MemUnmap(addr); PR_CloseFileMap(fm)        the end of the with blocks
Client
  fm = PR_ImportFileMapFromString(fmstring)     AnonymousMemory.from_token(fmstring)
  addr = PR_MemMap(fm)                          fm.map()

The token is only a descriptor number (a handle on Windows): the child must inherit that
very descriptor.  ``for_child()`` makes a duplicate for this one child and the Popen
options that pass it (``pass_fds`` on POSIX, a handle list on Windows); anonshm's own
descriptors are never inheritable, so no other child ever sees them.
"""

from __future__ import annotations

import subprocess
import sys

from anonshm import AnonymousMemory

SIZE = 1 << 20
REPLY_AT = SIZE // 2


def server() -> int:
    with AnonymousMemory(SIZE, name="second-protocol") as fm, fm.map() as addr:
        addr[0:5] = b"hello"
        with fm.for_child() as (fmstring, options):
            print(f"server: exported {fmstring!r} for {fm!r}")
            # The application's own technique to pass fmstring: the command line.
            argv = [sys.executable, __file__, "client", fmstring]
            status = subprocess.run(argv, check=False, **options).returncode
        reply = addr[REPLY_AT : REPLY_AT + 5]
        print(f"server: client exited with {status}, replied {reply!r}")
        return 0 if status == 0 and reply == b"olleh" else 1


def client(fmstring: str) -> int:
    with AnonymousMemory.from_token(fmstring) as fm, fm.map() as addr:
        greeting = addr[0:5]
        print(f"client: imported {fmstring!r} as {fm!r}, read {greeting!r}")
        addr[REPLY_AT : REPLY_AT + 5] = greeting[::-1]
        return 0 if greeting == b"hello" else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"] and len(sys.argv) == 3:
        sys.exit(client(sys.argv[2]))
    sys.exit(server())

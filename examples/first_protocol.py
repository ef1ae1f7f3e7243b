"""NSPR's first protocol: the child inherits the memory from the process that starts it.

The seed's pseudo-code, line for line, as one script that plays both parts::

    python examples/first_protocol.py           # the server; it starts the client

Server (NSPR)                                   anonshm
  fm = PR_OpenAnonFileMap(dir, size, prot)      AnonymousMemory(size, name=...)
  addr = PR_MemMap(fm)                          fm.map()
  PR_ProcessAttrSetInheritableFileMap(...)      spawn(..., inherit=[fm])
  PR_CreateProcess(Client)                        (the same call)
  PR_MemUnmap(addr); PR_CloseFileMap(fm)        the end of the with blocks
Client
  fm = PR_GetInheritedFileMap(shmname)          AnonymousMemory.inherited(shmname)
  addr = PR_MemMap(fm)                          fm.map()
"""

from __future__ import annotations

import sys

from anonshm import AnonymousMemory, spawn

SHM_NAME = "first-protocol"
SIZE = 4096
QUESTION = b"what is six times seven?"
REPLY_AT = 1024


def server() -> int:
    with AnonymousMemory(SIZE, name=SHM_NAME) as fm, fm.map() as addr:
        addr[: len(QUESTION)] = QUESTION
        print(f"server: wrote {QUESTION!r} into {fm!r}")
        with spawn([sys.executable, __file__, "client"], inherit=[fm]) as client:
            status = client.wait(timeout=60)
        reply = addr[REPLY_AT : REPLY_AT + 2]
        print(f"server: client {client.pid} exited with {status}, replied {reply!r}")
        return 0 if status == 0 and reply == b"42" else 1


def client() -> int:
    with AnonymousMemory.inherited(SHM_NAME) as fm, fm.map() as addr:
        question = addr[: len(QUESTION)]
        print(f"client: inherited {fm!r}, read {question!r}")
        addr[REPLY_AT : REPLY_AT + 2] = b"42"
        return 0 if question == QUESTION else 1


if __name__ == "__main__":
    sys.exit(client() if sys.argv[1:] == ["client"] else server())

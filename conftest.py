"""Collection: each platform's doctests import only the modules that platform has."""

import sys

collect_ignore = []
if sys.platform != "win32":
    collect_ignore += ["anonshm/_windows.py", "anonshm/_winsection.py", "anonshm/_win32.py"]
else:
    collect_ignore += ["anonshm/_unix.py", "anonshm/_posix.py", "anonshm/_handoff.py"]
if sys.platform != "linux":
    collect_ignore += ["anonshm/_linux.py", "anonshm/_ps.py", "anonshm/_limits.py"]

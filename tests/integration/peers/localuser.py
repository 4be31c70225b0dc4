"""A call made as `nobody`, a local user who is neither root nor the server's: in a forked
child of the test's process that drops to nobody's uid (the test's Python may live where
nobody cannot read it, so what the call needs is imported before the fork)."""

from __future__ import annotations

import io
import os
import pwd
import sys
from collections.abc import Callable

NOBODY = pwd.getpwnam("nobody")


def as_nobody(call: Callable[[], int], stdin: bytes = b"") -> tuple[int, str, str]:
    """`call()` in a child that is nobody; its exit code (what `call` returned), and what it
    wrote on stdout and on stderr."""
    read_out, write_out = os.pipe()
    read_err, write_err = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            os.close(read_out)
            os.close(read_err)
            os.dup2(write_out, 1)
            os.dup2(write_err, 2)
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            os.chdir("/")
            sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
            sys.stdout = os.fdopen(1, "w")
            sys.stderr = os.fdopen(2, "w")
            code = call()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException as exc:
            os.write(2, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(write_out)
    os.close(write_err)
    with os.fdopen(read_out) as out, os.fdopen(read_err) as err:
        # Small outputs (a line or a screen): the pipes' buffers hold them while we read one.
        printed, errors = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), printed, errors

"""Start the sandbox in its own user namespace, so that its "root" (nbgrader, the test runner) is an
unprivileged uid of the host.

``python -m optcourse.autograde.userns PROC OUTER KERNEL_UID -- command...``: a child enters a new user namespace;
this process (real root) writes its maps, ``0 -> OUTER`` and ``KERNEL_UID -> OUTER + 1``, then the child
becomes the namespace's root and execs ``command`` (``unshare --mount --net --pid ...``, whose namespaces the
new user namespace then owns). ``PROC`` is the procfs of this process's PID namespace (in the sandbox, its
own ``/proc``: this runs chroot'ed, still as host root). Inside, root keeps the powers it needs over the sandbox's own mounts and
network; outside, every process of the sandbox is ``OUTER`` or ``OUTER + 1``: if anything escaped the
chroot, it would hold no privilege on the host and could not read root's files. (``unshare --map-users``
needs ``newuidmap``, which minimal hosts lack; writing the maps from a privileged parent does not.)
"""
from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000


def _unshare_user() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWUSER): {os.strerror(err)}")


def main(argv: list[str]) -> int:
    proc, outer, kernel_uid = argv[0], int(argv[1]), int(argv[2])
    command = argv[argv.index("--") + 1:]
    go_read, go_write = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child (covered through the sandbox tests)
        os.close(go_write)
        os.close(ready_read)
        try:
            _unshare_user()
            os.write(ready_write, b"1")
            if os.read(go_read, 1) != b"1":
                os._exit(98)
            os.setresgid(0, 0, 0)
            os.setgroups([])
            os.setresuid(0, 0, 0)
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"userns: {exc}", file=sys.stderr)
        os._exit(97)
    os.close(go_read)
    os.close(ready_write)
    if os.read(ready_read, 1) != b"1":
        os.waitpid(pid, 0)
        return 97
    mapping = f"0 {outer} 1\n{kernel_uid} {outer + 1} 1\n"
    for name in ("uid_map", "gid_map"):
        with open(f"{proc}/{pid}/{name}", "w") as f:
            f.write(mapping)
    os.write(go_write, b"1")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

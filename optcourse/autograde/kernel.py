"""Kernel launcher of the sandbox: drop privileges and set resource limits, then start ipykernel.

nbgrader (running as root inside the sandbox's namespaces) starts the kernel through the
``optcourse-sandbox`` kernelspec, whose argv is ``python -m optcourse.autograde.kernel {connection_file}``.
This runs before any student code: it copies the connection file (which jupyter_client wrote 0600
for root) into the kernel's HOME, gives the working directory to the kernel's user, applies
``RLIMIT_AS`` (memory), ``RLIMIT_NPROC`` (fork bombs), ``RLIMIT_FSIZE`` (giant files) and
``RLIMIT_CORE`` = 0, drops to the unprivileged uid/gid with no supplementary groups and exec's
``ipykernel_launcher``. The student's code therefore runs as a user that cannot read the sandbox's
gradebook (0600 root) or the lab's source copy (0700 root).
"""
from __future__ import annotations

import os
import resource
import shutil
import sys


WORK_DIR = "/grading/work"  # the kernel's working folder: a copy of the lab's files (inner._student_workdir)


def _limit(which: int, value: int) -> None:
    resource.setrlimit(which, (value, value))


def main(argv: list[str]) -> None:
    conn, extra = argv[0], argv[1:]
    uid = int(os.environ["OPTCOURSE_SANDBOX_UID"])
    home = os.environ["OPTCOURSE_SANDBOX_HOME"]
    cwd = os.getcwd()
    if cwd != WORK_DIR:
        raise SystemExit(f"sandbox kernel refused to start outside {WORK_DIR} (cwd {cwd})")
    os.makedirs(home, exist_ok=True)
    private_conn = os.path.join(home, "kernel-connection.json")
    shutil.copyfile(conn, private_conn)
    for root, dirs, files in os.walk(cwd):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)
    for path in (cwd, home, private_conn):
        os.chown(path, uid, uid)
    os.chmod(private_conn, 0o600)
    memory = int(os.environ.get("OPTCOURSE_SANDBOX_MEMORY", 4 << 30))
    if memory > 0:  # 0: a GPU kernel (see sandbox._environment)
        _limit(resource.RLIMIT_AS, memory)
    _limit(resource.RLIMIT_NPROC, int(os.environ.get("OPTCOURSE_SANDBOX_NPROC", 256)))
    _limit(resource.RLIMIT_FSIZE, int(os.environ.get("OPTCOURSE_SANDBOX_FSIZE", 256 << 20)))
    _limit(resource.RLIMIT_CORE, 0)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() == 0 or os.geteuid() == 0:  # pragma: no cover - paranoia
        raise SystemExit("sandbox kernel still has root privileges")
    os.environ["HOME"] = home
    watch = tuple(m for m in os.environ.get("OPTCOURSE_SANDBOX_WATCH", "").split(",") if m)
    for key in [k for k in os.environ if k.startswith("OPTCOURSE_SANDBOX_")]:
        del os.environ[key]
    from optcourse.autograde.guard import startup

    # the guard records the library functions and IPython's machinery before any student code runs (guard.py)
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", private_conn,
                              f"--IPKernelApp.exec_lines={startup(watch)}", *extra])


if __name__ == "__main__":
    main(sys.argv[1:])

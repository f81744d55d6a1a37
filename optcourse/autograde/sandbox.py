"""Run one submission's nbgrader autograde in an operating-system sandbox (no Docker needed).

Layers, each demonstrated by ``tests/autograder/test_autograde_pipeline.py`` (the sample catalogue):

1. **Namespaces** (``unshare --mount --net --pid --fork``): a private network namespace with only
   its own loopback (no route out; 127.0.0.1 is not the host's), a private PID namespace (the student
   sees and can signal only its own processes; everything dies with the sandbox) and a private mount
   namespace in which we build a new root (tmpfs) holding read-only binds of the system (``/usr``,
   ``/etc``), the Python interpreter and virtual environment, the course library ``optcourse/`` and
   ``/grading`` (this submission's copy of the course), then ``chroot`` into it. The repository
   (``solutions/``, ``.git``, ``autograder/``), ``/tmp``, ``/root``, other students' sandboxes and the
   real gradebook do not exist in there.
2. **Users**: nbgrader itself runs as the sandbox's root; the student's kernel is started by
   ``optcourse.autograde.kernel``, which drops to an unprivileged uid unique to this submission, so the
   sandbox's own gradebook copy (0600) and the lab's source copy (0700) are unreadable to it.
3. **Limits**: ``RLIMIT_AS`` (memory), ``RLIMIT_NPROC`` (fork bombs), ``RLIMIT_FSIZE``, size-limited tmpfs
   for everything the kernel's user can write (its notebook folder, HOME, ``/tmp``, ``/dev/shm``), a
   per-cell timeout (nbgrader's ``Execute.timeout``, the kernel is interrupted) and a per-notebook wall
   time (the whole sandbox is killed).

The sandbox returns ``result.json``; it never writes the real gradebook (see ``pipeline``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from optcourse.core.paths import PACKAGE_DIR, REPO_ROOT

SANDBOX_ROOT = "/grading"
SEALED = "sealed"    # jail/sealed/<path in the library>: sealed sources bound over the library's files
TRUSTED = "trusted"  # /grading/trusted/optcourse: the real library, for the test runner only (0700, root)
KERNEL_NAME = "optcourse-sandbox"
UID_BASE = 720000  # uids with no passwd entry, far from real users; one per submission slot
USERNS_BASE = 1_000_000_000  # host uids of the sandboxes' user namespaces (2 per slot: root, kernel), above every UID_BASE slot


def outer_uid(uid: int) -> int:
    """The host uid that the sandbox's root maps to for the slot whose kernel uid is ``uid`` (the kernel's
    is the next one)."""
    return USERNS_BASE + 2 * (uid - UID_BASE)


@functools.lru_cache(maxsize=1)
def user_namespace_available() -> tuple[bool, str]:
    """Whether this host lets root create a user namespace and map it (see ``userns.py``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    probe = subprocess.run([sys.executable, "-m", "optcourse.autograde.userns", "/proc", str(USERNS_BASE),
                            str(UID_BASE), "--", "true"], capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        return False, f"no user namespace: {probe.stderr.strip()[:200]}"
    return True, "user namespace available"


@dataclasses.dataclass
class Limits:
    cell_timeout_s: int = 60
    notebook_timeout_s: int = 300
    memory_bytes: int = 4 << 30
    nproc: int = 512
    file_bytes: int = 256 << 20
    tmp_bytes: int = 256 << 20
    work_bytes: int = 1 << 30     # the notebook's folder and the kernel's HOME: tmpfs, so a full disk is the sandbox's own
    gpu: bool = False             # show the NVIDIA devices (those CUDA_VISIBLE_DEVICES names) and lift RLIMIT_AS


@dataclasses.dataclass
class SandboxRun:
    result: dict | None
    returncode: int | None
    timed_out: bool
    wall_s: float
    log: str


def sandbox_available() -> tuple[bool, str]:
    """Whether namespaces, chroot and uid switching work here (root, util-linux ``unshare``)."""
    if os.geteuid() != 0:
        return False, "the sandbox needs root (to create namespaces and switch to an unprivileged uid)"
    if not shutil.which("unshare") or not shutil.which("chroot"):
        return False, "util-linux `unshare` and `chroot` are needed"
    probe = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"unshare failed: {probe.stderr.strip()}"
    return True, "namespaces available"


class Cgroup:
    """One submission's cgroup (v1 ``memory`` and ``pids`` controllers, where the host mounts them): limits
    that hold across every process of the sandbox and the tmpfs pages they fill, which per-process rlimits do
    not. Memory: the kernel's limit plus ``GRADER_MEMORY`` for nbgrader itself (no memory group for a GPU
    sandbox, whose CUDA host allocations are not the student's choice); tasks: ``nproc`` plus
    ``GRADER_TASKS`` for nbgrader's threads. ``close()`` kills whatever is left in it and removes it."""

    ROOT = pathlib.Path("/sys/fs/cgroup")
    GRADER_MEMORY = 768 << 20
    GRADER_TASKS = 256

    def __init__(self, name: str, limits: Limits):
        self.dirs: list[pathlib.Path] = []
        wanted = {"pids": {"pids.max": limits.nproc + self.GRADER_TASKS}}
        if not limits.gpu:
            wanted["memory"] = {"memory.limit_in_bytes": limits.memory_bytes + self.GRADER_MEMORY}
        for controller, settings in wanted.items():
            base = self.ROOT / controller
            if os.geteuid() != 0 or not (base / "cgroup.procs").is_file():
                continue
            path = base / "optcourse-sandbox" / name
            try:
                path.mkdir(parents=True)
                for key, value in settings.items():
                    (path / key).write_text(str(value))
            except OSError:
                self._remove(path)
                continue
            self.dirs.append(path)

    @property
    def procs(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def members(self) -> set[int]:
        pids = set()
        for d in self.dirs:
            try:
                pids |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return pids

    def close(self) -> None:
        for _ in range(50):
            left = self.members()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        for d in self.dirs:
            self._remove(d)

    @staticmethod
    def _remove(path: pathlib.Path) -> None:
        for _ in range(20):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


def _bind_sources() -> list[str]:
    """Host paths bound read-only into the sandbox root: system, interpreter, venv, course library."""
    wanted = ["/usr", "/etc", os.path.realpath(sys.base_prefix), sys.prefix, os.path.realpath(sys.prefix),
              str(PACKAGE_DIR)]
    out: list[str] = []
    for path in wanted:
        if not os.path.isdir(path):
            continue
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in out):
            continue
        out.append(path)
    return out


def _gpu_devices() -> list[str]:
    """The NVIDIA device nodes (control devices and every GPU: CUDA_VISIBLE_DEVICES picks among them)."""
    import glob

    return sorted(p for p in glob.glob("/dev/nvidia*") if not os.path.isdir(p))


LOOPBACK_UP = ("import fcntl, socket, struct\n"
               "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
               "flags = struct.unpack('16sh', fcntl.ioctl(s, 0x8913, struct.pack('16sh', b'lo', 0)))[1]  # SIOCGIFFLAGS\n"
               "fcntl.ioctl(s, 0x8914, struct.pack('16sh', b'lo', flags | 1))  # SIOCSIFFLAGS: IFF_UP\n")


def _mount_script(new_root: str, grading: str, limits: Limits, uid: int = UID_BASE, owner: int | None = None,
                  sealed: pathlib.Path | None = None) -> str:
    """The sandbox's start script, run as host root in its new namespaces: build the root, then start the
    grading step chroot'ed; with ``owner``, inside a user namespace whose root is that host uid. With ``sealed``
    (a folder of sealed library files, ``seal.py``), each is bound over the library's file, the library's
    bytecode caches beside them are hidden, and the real library is bound at /grading/trusted for the runner."""
    q = shlex.quote
    own = f",uid={owner},gid={owner}" if owner is not None else ""
    lines = ["set -e", f"N={q(new_root)}", 'mount -t tmpfs -o mode=0755,size=16m tmpfs "$N"',
             # /tmp first: a repository or venv that lives under /tmp is bound on top of it below
             f'mkdir -p "$N"/tmp && mount -t tmpfs -o mode=1777,size={limits.tmp_bytes} tmpfs "$N"/tmp']
    for top in ("bin", "lib", "lib64", "lib32", "sbin"):
        host = f"/{top}"
        if os.path.islink(host):
            lines.append(f'ln -s {q(os.readlink(host))} "$N"/{top}')
        elif os.path.isdir(host):
            lines.append(f'mkdir -p "$N"/{top} && mount --rbind {host} "$N"/{top} && '
                         f'mount -o remount,bind,ro "$N"/{top}')
    for src in _bind_sources():
        lines.append(f'mkdir -p "$N"{q(src)} && mount --rbind {q(src)} "$N"{q(src)} && '
                     f'mount -o remount,bind,ro "$N"{q(src)}')
    caches = set()
    for path in sorted(sealed.rglob("*.py")) if sealed else []:
        target = PACKAGE_DIR / path.relative_to(sealed)
        lines.append(f'mount --bind {q(str(path))} "$N"{q(str(target))} && mount -o remount,bind,ro "$N"{q(str(target))}')
        caches.add(target.parent / "__pycache__")
    lines += [f'mount -t tmpfs -o mode=0555,size=64k tmpfs "$N"{q(str(c))}' for c in sorted(caches) if c.is_dir()]
    lines += [
        f'mkdir -p "$N"{SANDBOX_ROOT} && mount --bind {q(grading)} "$N"{SANDBOX_ROOT}',
        # size-limited tmpfs, not the host's disk: nbgrader's output (root only: the notebook there holds the
        # hidden tests, and a student's symlink there must not redirect nbgrader's writes), the kernel's
        # working folder and its HOME (given to the kernel's user by kernel.py)
        *[f'mount -t tmpfs -o mode=0700,size={limits.work_bytes}{own} tmpfs "$N"{SANDBOX_ROOT}/{sub}'
          for sub in ("autograded", "work", "home")],
        *([f'mount --rbind {q(str(PACKAGE_DIR))} "$N"{SANDBOX_ROOT}/{TRUSTED}/optcourse && '
           f'mount -o remount,bind,ro "$N"{SANDBOX_ROOT}/{TRUSTED}/optcourse'] if sealed else []),
        'mkdir -p "$N"/dev "$N"/proc',
        'mount -t tmpfs -o mode=0755,size=1m tmpfs "$N"/dev',
        'for d in null zero random urandom full; do touch "$N"/dev/$d; mount --bind /dev/$d "$N"/dev/$d; done',
        *[f'touch "$N"{q(d)} && mount --bind {q(d)} "$N"{q(d)}' for d in (_gpu_devices() if limits.gpu else [])],
        f'mkdir "$N"/dev/shm && mount -t tmpfs -o mode=1777,size={limits.tmp_bytes} tmpfs "$N"/dev/shm',
        'mount -t proc -o nosuid,nodev,noexec proc "$N"/proc',
        # host-wide kernel settings stay out of reach even of the sandbox's root
        'mount --bind "$N"/proc/sys "$N"/proc/sys && mount -o remount,bind,ro "$N"/proc/sys',
        # the kernel's ZMQ sockets use this namespace's own loopback: bring it up (an ioctl, so that a machine
        # without iproute2's `ip`, like a bare GPU image, needs nothing more)
        f"{q(sys.executable)} -c {q(LOOPBACK_UP)}",
    ]
    python = q(sys.executable)
    grade = f"{python} -m optcourse.autograde.inner {SANDBOX_ROOT}"
    if owner is not None:  # the mounts above need host root; what runs in the new root does not
        grade = f"{python} -m optcourse.autograde.userns /proc {owner} {uid} -- {grade}"
    # pivot_root, then detach the host's tree: unlike chroot, nothing of the host stays reachable, and a user
    # namespace can be created in there (the kernel refuses one to a chroot'ed process)
    pivot = q(shutil.which("pivot_root") or "/usr/sbin/pivot_root")  # sbin: not on the sandbox's PATH
    lines += ['mkdir "$N"/.host', 'cd "$N"', f"{pivot} . .host", "cd /", "umount -l /.host", "rmdir /.host",
              f"exec {grade}"]
    return "\n".join(lines)


def _environment(uid: int, limits: Limits) -> dict[str, str]:
    from optcourse.core.paths import offline_environment

    home = f"{SANDBOX_ROOT}/home"
    env = offline_environment(pathlib.Path(home) / ".cache")
    env.update({
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": f"{SANDBOX_ROOT}/.nbgrader-home",
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "JUPYTER_PATH": f"{SANDBOX_ROOT}/jupyter/data",
        "JUPYTER_DATA_DIR": f"{SANDBOX_ROOT}/jupyter/data",
        "JUPYTER_CONFIG_DIR": f"{SANDBOX_ROOT}/jupyter/config",
        "JUPYTER_RUNTIME_DIR": f"{SANDBOX_ROOT}/jupyter/runtime",
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": f"{home}/.ipython",
        "MPLCONFIGDIR": f"{home}/.matplotlib",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
        "OPTCOURSE_GRADING": "1",  # a lab may skip work no test reads while it is graded (lab03's baseline)
        "OPTCOURSE_SANDBOX_UID": str(uid),
        "OPTCOURSE_SANDBOX_HOME": home,
        # CUDA maps tens of GiB of address space: a GPU kernel gets no RLIMIT_AS (GPU memory is the device's)
        "OPTCOURSE_SANDBOX_MEMORY": "0" if limits.gpu else str(limits.memory_bytes),
        "OPTCOURSE_SANDBOX_NPROC": str(limits.nproc),
        "OPTCOURSE_SANDBOX_FSIZE": str(limits.file_bytes),
    })
    if limits.gpu and "CUDA_VISIBLE_DEVICES" in os.environ:  # set by Ray for a task with num_gpus
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def prepare_jail(template: pathlib.Path, lab: str, student: str, notebook: pathlib.Path,
                 notebook_name: str, artifacts: list[str], limits: Limits, jail_parent: pathlib.Path | None = None,
                 uid: int = UID_BASE, keep_notebook: bool = False, watch: list[str] | None = None,
                 sealed: dict[str, str] | None = None, run_all: bool = False) -> pathlib.Path:
    """Make this submission's private course copy: template (lab files without notebooks + gradebook) + notebook;
    with ``sealed`` (library file -> sealed source, ``seal.sealed_files``), the files ``run_jail`` binds over the
    library's."""
    jail = pathlib.Path(tempfile.mkdtemp(prefix="ogjail-", dir=jail_parent))
    os.chmod(jail, 0o700)
    grading = jail / "grading"
    shutil.copytree(template, grading)
    os.chmod(grading, 0o711)
    for sub in ("source", "submitted", "jupyter", ".nbgrader-home"):
        (grading / sub).mkdir(exist_ok=True)
        os.chmod(grading / sub, 0o700)
    os.chmod(grading / "gradebook.db", 0o600)
    os.chmod(grading / "instructor.json", 0o600)
    sub_dir = grading / "submitted" / student / lab
    shutil.copytree(grading / "source" / lab, sub_dir)
    shutil.copyfile(notebook, sub_dir / notebook_name)
    for sub in ("autograded", "work", "home"):
        (grading / sub).mkdir(mode=0o700)
    os.chown(grading / "home", uid, uid)
    kdir = grading / "jupyter" / "data" / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "optcourse.autograde.kernel", "{connection_file}"],
        "display_name": "optcourse sandbox", "language": "python"}))
    (jail / "root").mkdir()
    if sealed:
        for path, text in sealed.items():
            dst = jail / SEALED / path
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text)
        (grading / TRUSTED / "optcourse").mkdir(parents=True)
        os.chmod(grading / TRUSTED, 0o700)  # the test runner's (sandbox root's) real library: not the kernel's
    job = {"lab": lab, "student": student, "cell_timeout": limits.cell_timeout_s, "artifacts": artifacts,
           "keep_notebook": keep_notebook, "watch": list(watch or []), "run_all": bool(run_all)}
    (grading / "job.json").write_text(json.dumps(job))
    os.chmod(grading / "job.json", 0o600)
    if user_namespace_available()[0]:  # the sandbox's root is outer_uid(uid) on the host: give it its files
        owner = outer_uid(uid)
        for path in [jail, *jail.rglob("*")]:
            os.lchown(path, owner, owner)
    return jail


def run_jail(jail: pathlib.Path, uid: int, limits: Limits) -> SandboxRun:
    """Execute the prepared jail in fresh namespaces; kill everything at the notebook time limit."""
    owner = outer_uid(uid) if user_namespace_available()[0] else None
    sealed = jail / SEALED
    script = _mount_script(str(jail / "root"), str(jail / "grading"), limits, uid, owner,
                           sealed if sealed.is_dir() else None)
    cmd = ["unshare", "--mount", "--net", "--pid", "--uts", "--ipc", "--fork", "--kill-child",
           "--propagation", "private", "--", "sh", "-c", script]
    group = Cgroup(jail.name, limits)
    if group.procs:  # the sandbox enters its cgroup before it starts anything
        cmd = ["sh", "-c", 'for f in "$@"; do echo $$ > "$f" || exit 97; shift; [ "$1" = -- ] && break; done; '
               'shift; exec "$@"', "sh", *group.procs, "--", *cmd]
    start = time.monotonic()
    log_path = jail / "sandbox.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_environment(uid, limits), start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=limits.notebook_timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    wall = time.monotonic() - start
    group.close()
    result = None
    result_path = jail / "grading" / "result.json"
    if not timed_out and result_path.is_file() and not result_path.is_symlink():
        try:
            result = json.loads(result_path.read_text()[: 8 << 20])
        except (ValueError, OSError):
            result = None
    log_text = log_path.read_bytes()[-20000:].decode("utf-8", "replace")
    return SandboxRun(result, rc, timed_out, wall, log_text)


# ---------------------------------------------------------------------------------------- one submission
def grade_task(task: dict) -> dict:
    """The unit of work of every backend (the local pool's worker, a Ray task's body): prepare this submission's
    jail, run it, bring back the result and artifacts. ``task`` is the plain dict ``pipeline.grade_batch`` makes."""
    limits = Limits(**task["limits"])
    jail = prepare_jail(pathlib.Path(task["template"]), task["lab"], task["student"], pathlib.Path(task["path"]),
                        task["notebook"], task["artifacts"], limits, pathlib.Path(task["jail_parent"]), task["uid"],
                        keep_notebook=bool(task.get("keep_jail")), watch=task.get("watch", []),
                        sealed=task.get("sealed", {}), run_all=bool(task.get("run_all")))
    try:
        run = run_jail(jail, task["uid"], limits)
        art_src = jail / "grading" / "artifacts"
        art_dest = pathlib.Path(task["artifact_dir"])
        if art_src.is_dir() and any(art_src.iterdir()):
            if art_dest.exists():
                shutil.rmtree(art_dest)
            shutil.copytree(art_src, art_dest, symlinks=True)
        if task.get("keep_jail"):
            graded = jail / "grading" / "executed" / task["notebook"]
            if graded.is_file() and not graded.is_symlink():
                pathlib.Path(task["artifact_dir"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(graded, pathlib.Path(task["artifact_dir"]).parent / f"{task['student']}.autograded.ipynb")
        return {"result": run.result, "returncode": run.returncode, "timed_out": run.timed_out, "wall_s": run.wall_s,
                "log": run.log}
    finally:
        shutil.rmtree(jail, ignore_errors=True)

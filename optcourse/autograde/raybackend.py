"""Class-scale grading on Ray: one Ray task per submission, the same sandbox as the local pool.

Each task runs ``sandbox.grade_task`` on whichever node Ray picks. A node has only what the
task carries: the lab's template (lab files without notebooks + the throw-away gradebook, packed once
and shared through the object store) and this one notebook; the artifacts (and, on request, the
executed notebook) come back as bytes. Nothing is written on the parent's disk by a task, so a node
needs only the repository's Python environment (``optcourse`` importable) and root, as the sandbox
does. Results flow back to the single trusted parent, which alone writes the gradebook (nbgrader's
SQLite database must not be written concurrently).

A task asks for ``num_cpus=1`` (one sandbox per core, as the local pool) and ``num_gpus`` when the lab
needs a GPU (``--gpus-per-task``); Ray then sets ``CUDA_VISIBLE_DEVICES``, which the sandbox passes on.
"""
from __future__ import annotations

import io
import logging
import os
import pathlib
import shutil
import tarfile
import tempfile
from typing import Iterator


def pack(folder: pathlib.Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def grade_remote(task: dict, template: bytes, notebook: bytes) -> dict:
    """Ray task body: unpack the template and notebook in a private folder of this node, grade there,
    return the sandbox's outcome plus ``files``: every file it left under ``artifacts/`` (path -> bytes)."""
    from optcourse.autograde.sandbox import grade_task

    with tempfile.TemporaryDirectory(prefix="autograde-task-") as tmp:
        work = pathlib.Path(tmp)
        os.chmod(work, 0o700)
        with tarfile.open(fileobj=io.BytesIO(template), mode="r:gz") as tar:
            tar.extractall(work / "template", filter="data")
        (work / "submission.ipynb").write_bytes(notebook)
        arts = work / "artifacts"
        local = dict(task, template=str(work / "template"), path=str(work / "submission.ipynb"), jail_parent=str(work),
                     artifact_dir=str(arts / task["student"]))
        outcome = grade_task(local)
        outcome["files"] = {str(p.relative_to(arts)): p.read_bytes() for p in sorted(arts.rglob("*"))
                            if p.is_file() and not p.is_symlink()} if arts.is_dir() else {}
    return outcome


def _unpack_files(outcome: dict, artifacts_root: pathlib.Path, student: str) -> None:
    """Write a task's returned files under ``artifacts_root`` (as the local pool leaves them), refusing escapes."""
    files = {os.path.normpath(name): data for name, data in (outcome.pop("files", None) or {}).items()}
    files = {name: data for name, data in files.items()  # this student's folder and executed notebook only
             if name.split(os.sep)[0] in (student, f"{student}.autograded.ipynb") and ".." not in name.split(os.sep)}
    if any(os.sep in name for name in files):
        shutil.rmtree(artifacts_root / student, ignore_errors=True)
    for norm, data in files.items():
        dest = artifacts_root / norm
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


def run(tasks: dict[str, dict], template: pathlib.Path, *, workers: int, address: str | None = None,
        gpus_per_task: float = 0, failed=None) -> Iterator[tuple[str, dict]]:
    """Grade ``tasks`` (student -> task) on Ray; yield ``(student, outcome)`` as tasks finish.

    Without ``address`` a private local Ray instance with ``workers`` CPUs is started (no dashboard,
    its temp folder and logs in a fresh folder under the system temp directory, removed afterwards).
    Raises ``ValueError`` before grading anything when the cluster has fewer GPUs than one task asks for."""
    import ray

    temp = None
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        # a short path: Ray's Unix sockets live in it (108-byte limit)
        temp = tempfile.mkdtemp(prefix="ray-ag-", dir="/tmp")
        ray.init(num_cpus=max(1, workers), num_gpus=None if gpus_per_task else 0, include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False, _temp_dir=temp)
    try:
        have = ray.cluster_resources().get("GPU", 0)
        if gpus_per_task > have:  # Ray would queue such tasks forever
            raise ValueError(f"each submission asks for {gpus_per_task:g} GPU(s) (--gpus-per-task) but the Ray "
                             f"cluster has {have:g}: pass --gpus-per-task 0 or a cluster with GPUs")
        remote = ray.remote(grade_remote).options(num_cpus=1, num_gpus=gpus_per_task, max_retries=0)
        template_ref = ray.put(pack(template))
        refs = {remote.remote(t, template_ref, pathlib.Path(t["path"]).read_bytes()): name for name, t in tasks.items()}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            name = refs[done[0]]
            try:
                outcome = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a lost task (node died) fails one submission, not the batch
                outcome = failed(exc)
            _unpack_files(outcome, pathlib.Path(tasks[name]["artifact_dir"]).parent, name)
            yield name, outcome
    finally:
        ray.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)

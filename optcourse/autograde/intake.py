"""Intake: turn whatever an instructor downloaded into one submission per student, whatever is in it.

Accepted: nbgrader's ``submitted/<student>/<lab>/<lab>.ipynb`` layout, a folder of notebooks, a single
notebook, or a ``.zip`` of any of these (an LMS bulk download: Canvas names files
``smithjohn_12345_678901_lab02.ipynb``, Moodle puts each student in a folder
``John Smith_12345_assignsubmission_file_/``).

Nothing in a submission can abort the batch or overwrite another student:

* every zip entry is read on its own: a damaged entry (bad CRC, unsupported compression, encrypted, a
  300-character name), a file too large, or one that compresses implausibly well (a zip bomb) becomes
  THAT student's invalid submission with the reason, flagged for review; the others are graded;
* caps: ``MAX_NOTEBOOK_BYTES`` per notebook, ``MAX_RATIO`` compression ratio per entry, ``MAX_TOTAL_BYTES``
  unpacked and ``MAX_ENTRIES`` entries per archive (an archive over the total is refused as a whole, with
  the reason, before anything is unpacked or graded);
* entry names are never used as paths (no traversal, no over-long file names): notebooks are written
  under the work folder as ``<id>.ipynb``;
* ids are collision-free: two submissions that map to the same id (``bob.ipynb`` and ``bob_lab02.ipynb``;
  ``Bob`` and ``bob``) both stay, the second under a fresh id (``bob_3`` when ``bob_2`` is taken), and both
  are flagged for an instructor's look;
* the LMS's identity wins over the student's file name: a Canvas file keeps ``<name>_<user id>``, a Moodle
  folder keeps its folder name (``John_Smith_12345``), a generic file name (``Untitled.ipynb``, the lab's
  own name) in a folder takes the folder's name;
* in a folder, links, FIFOs and other special files are never opened: they are invalid submissions.

A source that is none of the accepted forms (a file that is not a zip or a notebook, a truncated zip, a
missing path) raises ``IntakeError`` (a ``ValueError``) before anything is graded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import stat
import zipfile

MAX_NOTEBOOK_BYTES = 20 << 20        # the same limit as the pre-check's
MAX_TOTAL_BYTES = 1 << 30            # all notebooks of one archive, unpacked
MAX_ENTRIES = 20_000
MAX_RATIO = 200                      # unpacked / packed size of one entry (above MIN_RATIO_BYTES)
MIN_RATIO_BYTES = 2 << 20
MAX_ID_CHARS = 64
STUDENT_RE = re.compile(r"[^A-Za-z0-9_.@-]+")
CANVAS_RE = re.compile(r"^(?P<name>[^_]+?)(?:_LATE)?_(?P<uid>\d+)_(?P<att>\d+)_(?P<file>.+)$", re.I)
MOODLE_DIR_RE = re.compile(r"^(?P<who>.+?_\d+)_(?:assignsubmission|onlinetext)_\w*?_?$", re.I)
MOODLE_FILE_RE = re.compile(r"^(?P<who>.+?_\d+)_assignsubmission_file_(?P<file>.+)$", re.I)
GENERIC_RE = re.compile(r"^(untitled|notebook|submission|assignment|solution|main|copy|unnamed)?[\W_]*\d*$", re.I)


class IntakeError(ValueError):
    """The submissions cannot be read at all (nothing was graded); the message says why."""


@dataclasses.dataclass
class Submission:
    """One student's notebook as found in the class's files, with what intake noticed about it."""

    student: str
    path: pathlib.Path
    notes: list[str] = dataclasses.field(default_factory=list)
    review: bool = False                 # graded, but an instructor should look (e.g. a renamed notebook)


def clean_id(raw: str) -> tuple[str, bool]:
    """A safe id (letters, digits, ``_.@-``; starts with a letter or digit; at most ``MAX_ID_CHARS``);
    and whether it had to be shortened (a hash of the full name keeps shortened ids apart)."""
    ident = STUDENT_RE.sub("_", raw)
    ident = re.sub(r"^[^A-Za-z0-9]+|[._-]+$", "", ident)
    if len(ident) > MAX_ID_CHARS:
        digest = hashlib.sha1(raw.encode("utf-8", "replace")).hexdigest()[:8]
        return f"{ident[:MAX_ID_CHARS - 9].rstrip('._-')}_{digest}", True
    return ident or "unnamed", False


def _is_generic(ident: str, lab: str) -> bool:
    low = ident.lower()
    return bool(GENERIC_RE.match(low)) or re.match(rf"^{re.escape(lab.lower())}[\W_]*\d*$", low) is not None


def student_id_from_filename(name: str, lab: str) -> str:
    """``alice.ipynb``, ``alice_demo_lab.ipynb``, ``demo_lab-bob.ipynb`` -> ``alice``/``bob``; a Canvas download
    ``smithjohn_12345_678901_lab02.ipynb`` (also ``_LATE_``, ``lab02-1.ipynb``) -> ``smithjohn_12345``; a flat
    Moodle file ``John Smith_12345_assignsubmission_file_lab02.ipynb`` -> ``John_Smith_12345``."""
    return clean_id(_raw_id(name, lab))[0]


def _raw_id(name: str, lab: str) -> str:
    """The id a file name gives, before ``clean_id`` (which may shorten it)."""
    base = pathlib.PurePosixPath(name).name
    m = MOODLE_FILE_RE.match(base)
    if m:
        return m.group("who")
    m = CANVAS_RE.match(base)
    if m:
        return f"{m.group('name')}_{m.group('uid')}"
    stem = pathlib.PurePosixPath(base).stem
    for sep in ("_", "-", "."):
        stem = stem.replace(f"{sep}{lab}", "").replace(f"{lab}{sep}", "")
    return stem


@dataclasses.dataclass
class Entry:
    """One file found in the source: its path inside it, where its bytes are, or why it cannot be graded."""
    parts: tuple[str, ...]
    path: pathlib.Path | None = None
    problem: str | None = None
    notebook: bool = True                # False: another file in a student's folder (counts only if nothing else)


@dataclasses.dataclass
class _Group:
    key: tuple
    ident: str
    label: str                           # what the instructor recognises: the folder or file name
    entries: list[Entry]
    layout: str                          # nbgrader | folder | file
    shortened: bool = False


def _identify(parts: tuple[str, ...], lab: str) -> tuple[tuple, str, str, str, bool]:
    """(group key, raw id, label, layout) of an entry by its path."""
    name = parts[-1]
    if len(parts) >= 3 and parts[-2] == lab:  # nbgrader: <student>/<lab>/<file>
        return ("nbgrader",) + parts[:-2], parts[-3], "/".join(parts[:-1]), "nbgrader"
    for i in range(len(parts) - 1):  # Moodle: the first folder that is a participant's
        m = MOODLE_DIR_RE.match(parts[i])
        if m:
            return ("folder",) + parts[:i + 1], m.group("who"), "/".join(parts[:i + 1]), "folder"
    raw = _raw_id(name, lab)
    if _lms_file(name):
        return ("file",) + parts, raw, "/".join(parts), "file"
    if _is_generic(clean_id(raw)[0], lab) and len(parts) >= 2 and not _is_generic(clean_id(parts[-2])[0], lab):
        return ("folder",) + parts[:-1], parts[-2], "/".join(parts[:-1]), "folder"
    return ("file",) + parts, raw if clean_id(raw)[0] != "unnamed" else pathlib.PurePosixPath(name).stem, "/".join(parts), "file"


def _lms_file(name: str) -> bool:
    return bool(MOODLE_FILE_RE.match(name) or CANVAS_RE.match(name))


def _skip(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or not parts


# ---------------------------------------------------------------------------------------- readers
def _from_zip(source: pathlib.Path, lab: str, dest: pathlib.Path, max_total: int) -> list[Entry]:
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise IntakeError(f"cannot read {source} as a zip archive ({type(exc).__name__}: {exc}); "
                          "download it again") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise IntakeError(f"{source} has {len(infos)} entries, more than the {MAX_ENTRIES} allowed")
        entries, total, wanted = [], 0, []
        for info in infos:
            parts = tuple(p for p in pathlib.PurePosixPath(info.filename.replace("\\", "/")).parts if p not in ("/", "..", "."))
            if info.is_dir() or _skip(parts):
                continue
            if not parts[-1].lower().endswith(".ipynb"):
                if _lms_file(parts[-1]) or (len(parts) >= 3 and parts[-2] == lab) or any(
                        MOODLE_DIR_RE.match(p) for p in parts[:-1]):
                    entries.append(Entry(parts, notebook=False,
                                         problem=f"no notebook was submitted (found {parts[-1][:80]!r})"))
                continue
            problem = None
            if info.file_size > MAX_NOTEBOOK_BYTES:
                problem = (f"the notebook unpacks to {info.file_size >> 20} MB, more than the "
                           f"{MAX_NOTEBOOK_BYTES >> 20} MB a notebook may have (a zip bomb, or large outputs): "
                           "clear the outputs and resubmit")
            elif info.file_size > MIN_RATIO_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                problem = (f"the notebook compresses {info.file_size / max(info.compress_size, 1):.0f}-fold, more than "
                           f"the {MAX_RATIO} allowed (a zip bomb?)")
            else:
                total += info.file_size
            wanted.append((info, parts, problem))
        if total > max_total:
            raise IntakeError(f"{source} unpacks to {total >> 20} MB of notebooks, more than the {max_total >> 20} MB "
                              "allowed (a zip bomb?); nothing was graded")
        dest.mkdir(parents=True, exist_ok=True)
        for n, (info, parts, problem) in enumerate(wanted):
            if problem:
                entries.append(Entry(parts, problem=problem))
                continue
            target = dest / f".entry-{n}"
            try:
                with zf.open(info) as src:
                    data = src.read(MAX_NOTEBOOK_BYTES + 1)
                if len(data) > MAX_NOTEBOOK_BYTES:
                    raise ValueError("larger than declared")
                target.write_bytes(data)
                entries.append(Entry(parts, target))
            except Exception as exc:  # noqa: BLE001 - one damaged entry is one student's problem
                why = str(exc)
                what = ("it is damaged (bad CRC-32)" if "CRC" in why else
                        "it is encrypted" if "encrypt" in why.lower() or "password" in why.lower() else
                        f"it cannot be unpacked ({type(exc).__name__})")
                entries.append(Entry(parts, problem=f"the archive's entry for this submission is unreadable: {what}; "
                                                    "download it again or ask the student to resubmit"))
        return entries


def _from_folder(source: pathlib.Path, lab: str) -> list[Entry]:
    entries = []
    for root, dirs, files in os.walk(source, followlinks=False):
        rel = pathlib.Path(root).relative_to(source).parts
        dirs[:] = sorted(d for d in dirs if not _skip((d,)))
        if len(rel) >= 2 and rel[-1] == lab and not any(f.lower().endswith(".ipynb") and not f.startswith(".")
                                                         for f in files):
            entries.append(Entry(rel + ("",), problem=f"no {lab}.ipynb in the submission folder", notebook=False))
        for name in sorted(files):
            parts = rel + (name,)
            if _skip(parts):
                continue
            path = pathlib.Path(root) / name
            if not name.lower().endswith(".ipynb"):
                if _lms_file(name) or any(MOODLE_DIR_RE.match(p) for p in rel):
                    entries.append(Entry(parts, notebook=False, problem=f"no notebook was submitted (found {name[:80]!r})"))
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(parts, problem="the submitted notebook is a symbolic link, not a file"))
            elif not stat.S_ISREG(st.st_mode):
                entries.append(Entry(parts, problem="the submitted notebook is not a regular file (a FIFO or device)"))
            else:
                entries.append(Entry(parts, path))
    return entries


# ---------------------------------------------------------------------------------------- ids
def _groups(entries: list[Entry], lab: str) -> list[_Group]:
    groups: dict[tuple, _Group] = {}
    for entry in entries:
        if not entry.parts[-1] and entry.problem:  # an empty nbgrader lab folder
            key, raw, label, layout = ("nbgrader",) + entry.parts[:-2], entry.parts[-3], "/".join(entry.parts[:-1]), "nbgrader"
        else:
            key, raw, label, layout = _identify(entry.parts, lab)
        if key not in groups:
            ident, shortened = clean_id(raw)
            groups[key] = _Group(key, ident, label, [], layout, shortened)
        groups[key].entries.append(entry)
    return list(groups.values())


def _choose(group: _Group, lab: str) -> tuple[Entry | None, list[str], bool]:
    """The entry to grade of one student's group, notes, review flag (None: the first problem is the reason)."""
    notebooks = [e for e in group.entries if e.notebook and e.parts[-1]]
    expected = [e for e in notebooks if e.parts[-1] == f"{lab}.ipynb"]
    if len(expected) == 1:
        return expected[0], [], False
    if len(notebooks) == 1:
        e = notebooks[0]
        if group.layout == "nbgrader":
            return e, [f"notebook was named {e.parts[-1]!r}, expected {lab}.ipynb; graded anyway"], True
        return e, [], False
    if not notebooks:
        return None, [next((e.problem for e in group.entries if e.problem), "no notebook was submitted")], True
    if group.layout == "nbgrader":
        return None, [f"no {lab}.ipynb in the submission folder"], True
    names = ", ".join(sorted(repr(e.parts[-1][:60]) for e in notebooks)[:5])
    return None, [f"{len(notebooks)} notebooks in one submission ({names}): the grader cannot tell which to grade"], True


def collect_submissions(source: str | os.PathLike, lab: str, workdir: pathlib.Path, *,
                        max_total_bytes: int | None = None) -> list:
    """One ``Submission`` per student found at ``source``, sorted by id (see the module's docstring).
    A submission that cannot be graded has a path that does not exist and its reason as the first note."""
    source, workdir = pathlib.Path(source), pathlib.Path(workdir)
    if source.is_dir():
        entries = _from_folder(source, lab)
    elif source.is_file() and zipfile.is_zipfile(source):
        entries = _from_zip(source, lab, workdir / "unzipped", max_total_bytes or MAX_TOTAL_BYTES)
    elif source.is_file() and source.suffix.lower() == ".ipynb":
        entries = [Entry((source.name,), source)]
    elif source.exists():
        raise IntakeError(f"{source} is not a zip archive, a folder or a notebook; nothing was graded")
    else:
        raise IntakeError(f"no submissions at {source} (no such file or folder); nothing was graded")
    if not entries:
        raise IntakeError(f"no notebook in {source}: nothing to grade (expected .ipynb files, nbgrader's "
                          "<student>/<lab>/ folders, or a zip of them)")

    def order(g: _Group):  # of ids that collide, the file or folder named exactly so keeps the id
        exact = clean_id(pathlib.PurePosixPath(g.label).name.removesuffix(".ipynb"))[0] == g.ident
        return g.ident.lower(), not exact, g.ident != g.ident.lower(), g.label

    groups = sorted(_groups(entries, lab), key=order)
    taken = {g.ident.lower() for g in groups}
    assigned: dict[str, _Group] = {}
    subs = []
    rejected = workdir / "rejected"
    for group in groups:
        ident, notes, review = group.ident, [], False
        if ident.lower() in assigned:  # the same id as an earlier submission: a fresh one, both flagged
            first = assigned[ident.lower()]
            n = 2
            while f"{ident}_{n}".lower() in taken or f"{ident}_{n}".lower() in assigned:
                n += 1
            ident = f"{group.ident}_{n}"
            notes.append(f"{group.label!r} maps to the id {group.ident!r} of another submission ({first.label!r}); "
                         f"graded as {ident!r}: check which is the student's")
            review = True
            first_sub = next(s for s in subs if s.student.lower() == group.ident.lower())
            first_sub.review = True
            first_sub.notes.append(f"another submission ({group.label!r}) also maps to this id; it was graded as {ident!r}")
        assigned[ident.lower()] = group
        if group.shortened:
            notes.append(f"the name {group.label[:40]!r}... was {len(group.label)} characters long; the id was shortened")
            review = True
        entry, more, flag = _choose(group, lab)
        review = review or flag
        if entry is None or entry.problem or entry.path is None:  # the reason first: the summary shows it
            reason = more if entry is None else [entry.problem or "no notebook was submitted"] + more
            subs.append(Submission(ident, rejected / f"{ident}.ipynb", reason + notes, review=True))
            continue
        notes = more + notes
        path = entry.path
        if path.name.startswith(".entry-"):  # unpacked from a zip: named after its id
            final = path.with_name(f"{ident}.ipynb")
            os.replace(path, final)
            path = final
        subs.append(Submission(ident, path, notes, review=review))
    for leftover in (workdir / "unzipped").glob(".entry-*") if (workdir / "unzipped").is_dir() else []:
        leftover.unlink()
    return sorted(subs, key=lambda s: (s.student.lower(), s.student))

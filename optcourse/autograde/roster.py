"""Map the ids intake reads from an LMS bulk download to the students' logins, with a roster CSV.

An LMS download does not name students by login: Canvas writes ``smithjohn_12345_678901_lab02.ipynb`` (sortable
name lowercased without spaces, then the user id), Moodle a folder ``John Smith_12345_assignsubmission_file_``
(full name, then the participant id); intake keeps ``smithjohn_12345`` and ``John_Smith_12345``. With a roster
(``--roster roster.csv``, ``make autograde ROSTER=...``) every graded row carries the login the LMS imports on::

    login,name,lms_id
    jsmith,John Smith,12345

``login`` is required; ``lms_id`` (the number in the download's names) and ``name`` match a submission: first the id's
trailing number against ``lms_id``, then its name part against ``name`` (any order of the name's words, accents and
punctuation ignored, as Canvas's ``smithjohn``), then the id itself against ``login``. A submission that matches no
row, or more than one, keeps its id and is flagged for an instructor's look; two submissions of one login both stay
(the second as ``<login>_2``, flagged). Roster students without a submission are listed as ``missing``
(``grades_lms.csv`` gives them an empty grade). A roster that cannot be read raises ``RosterError`` before anything
is graded.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import pathlib
import re
import unicodedata

from optcourse.autograde.intake import Submission, clean_id

MAX_ROWS = 100_000


class RosterError(ValueError):
    """The roster cannot be used (nothing was graded); the message says why."""


@dataclasses.dataclass(frozen=True)
class Student:
    login: str
    name: str = ""
    lms_id: str = ""


def squash(text: str) -> str:
    """Letters and digits only, lowercased, accents dropped: ``"Smith, John"`` -> ``"smithjohn"``."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", plain.lower())


def name_keys(name: str) -> set[str]:
    """Every squashed order of a name's words an LMS may write (``John Smith``: johnsmith, smithjohn)."""
    words = [w for w in re.split(r"[\s,]+", name) if squash(w)]
    if not words:
        return set()
    if len(words) > 6:   # orders of 7+ words: keep the written one and its rotations
        return {squash("".join(words[i:] + words[:i])) for i in range(len(words))}
    return {squash("".join(p)) for p in itertools.permutations(words)}


@dataclasses.dataclass
class Roster:
    students: list[Student]

    def __post_init__(self) -> None:
        # every order of every student's name, computed once (match() runs once per submission)
        self.by_name: dict[str, list[Student]] = {}
        for s in self.students:
            for key in name_keys(s.name) if s.name else ():
                self.by_name.setdefault(key, []).append(s)

    @classmethod
    def load(cls, path: str | pathlib.Path) -> "Roster":
        path = pathlib.Path(path)
        if not path.is_file():
            raise RosterError(f"roster {path} not found (a CSV with a header: login, and name and/or lms_id)")
        try:
            text = path.read_text(encoding="utf-8-sig")   # an LMS export may start with a byte-order mark
        except (OSError, UnicodeDecodeError) as err:
            raise RosterError(f"roster {path} cannot be read as UTF-8 text: {err}") from None
        rows = list(csv.DictReader(text.splitlines()))
        header = {h.strip().lower() for h in (rows[0].keys() if rows else next(csv.reader(text.splitlines()), []))}
        if "login" not in header or not header & {"name", "lms_id"}:
            raise RosterError(f"roster {path}: the header must have login and at least one of name, lms_id "
                              f"(it has {', '.join(sorted(h for h in header if h)) or 'nothing'})")
        if not rows:
            raise RosterError(f"roster {path} lists no student")
        if len(rows) > MAX_ROWS:
            raise RosterError(f"roster {path} has {len(rows)} rows (at most {MAX_ROWS})")
        students, seen = [], {"login": {}, "lms_id": {}}
        for line, row in enumerate(rows, 2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
            student = Student(row.get("login", ""), row.get("name", ""), row.get("lms_id", ""))
            if not student.login or clean_id(student.login) != (student.login, False):
                raise RosterError(f"roster {path} line {line}: login {student.login!r} is empty or not a plain id "
                                  f"(letters, digits, _ . @ -)")
            if student.lms_id and not student.lms_id.isdigit():
                raise RosterError(f"roster {path} line {line}: lms_id {student.lms_id!r} is not a number")
            for key in ("login", "lms_id"):
                value = getattr(student, key)
                if value and value in seen[key]:
                    raise RosterError(f"roster {path} line {line}: {key} {value!r} also on line {seen[key][value]}")
                seen[key][value] = line
            students.append(student)
        return cls(students)

    def match(self, ident: str) -> tuple[list[Student], str]:
        """The roster rows an intake id matches, and on what."""
        number = re.search(r"_(\d+)$", ident)
        if number:
            hits = [s for s in self.students if s.lms_id and s.lms_id == number.group(1)]
            if hits:
                return hits, f"LMS id {number.group(1)}"
        name = squash(ident[:number.start()] if number else ident)
        hits = list(self.by_name.get(name, [])) if name else []
        if hits:
            return hits, "name"
        return [s for s in self.students if s.login == ident], "login"


def assign(subs: list[Submission], roster: Roster) -> tuple[list[Submission], list[str]]:
    """Rename each submission to its roster login (notes and review flags say what happened); returns the
    submissions and the logins without one."""
    matches = {id(sub): roster.match(sub.student) for sub in subs}
    used = set()
    for sub in subs:   # first the ids that stay: a login never takes an unmatched submission's id
        hits, on = matches[id(sub)]
        if len(hits) != 1:
            why = "matches no roster row" if not hits else \
                f"matches {len(hits)} roster rows on {on} ({', '.join(h.login for h in hits)})"
            sub.notes.append(f"roster: {sub.student} {why}: kept under its own id")
            sub.review = True
            used.add(sub.student)
    given = set()
    for sub in subs:
        hits, on = matches[id(sub)]
        if len(hits) != 1:
            continue
        login = hits[0].login
        if login in used:
            fresh = next(f"{login}_{n}" for n in itertools.count(2) if f"{login}_{n}" not in used)
            sub.notes.append(f"roster: another submission is already graded as {login}: {sub.student} "
                             f"(matched on {on}) is graded as {fresh}")
            sub.review, login = True, fresh
        elif login != sub.student:
            sub.notes.append(f"roster: {sub.student} is {login} (matched on {on})")
        given.add(hits[0].login)
        used.add(login)
        sub.student = login
    missing = sorted(s.login for s in roster.students if s.login not in given)
    return subs, missing

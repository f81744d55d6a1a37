"""The unsandboxed helper ``optcourse.course.grade_notebook.autograde_notebook``, called from a plain script the way
an instructor would (no activated environment: nbgrader's gradebook needs ``alembic`` from this interpreter's bin)."""
import os
import subprocess
import sys

from optcourse.core.paths import AUTOGRADER_DIR

SCRIPT = """
from optcourse.course.grade_notebook import autograde_notebook
from optcourse.core.paths import AUTOGRADER_DIR
lab = AUTOGRADER_DIR / "samples" / "demo_lab"
report = autograde_notebook("demo_lab", lab / "submissions" / "partial.ipynb", source_dir=lab / "source")
print(sorted(report.cells.items()))
"""


def test_autograde_notebook_grades_from_a_plain_script(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON", "HF_", "VLLM"))}
    env["PATH"] = "/usr/bin:/bin"  # not the virtual environment's bin
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # partial.ipynb: add() is wrong on negative numbers (hidden test), normalize() is right
    assert out.stdout.strip().splitlines()[-1] == "[('test_task1_add', (0.0, 2.0)), ('test_task2_normalize', (3.0, 3.0))]"
    assert (AUTOGRADER_DIR / "samples" / "demo_lab" / "submissions" / "partial.ipynb").is_file()

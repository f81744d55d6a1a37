"""nbgrader in the students' JupyterLab (``make lab`` puts this folder on JUPYTER_CONFIG_PATH).

The Validate button reads the course's own config (its cell timeout, not nbgrader's default 30 s):
one file for instructors and students, autograder/nbgrader_config.py.
"""
c = get_config()  # noqa: F821 - provided by nbgrader's config loader
load_subconfig("../autograder/nbgrader_config.py")  # noqa: F821 - relative to this file's folder

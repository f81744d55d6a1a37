"""nbgrader configuration of the course: solutions/ is the source, labs/ the release.

Instructors run nbgrader from this folder (``cd autograder && nbgrader ...``) or through
``make release`` / ``make autograde``; ``optcourse.course.release`` loads this same file, so there is one
configuration.
"""
import os

c = get_config()  # noqa: F821 - provided by nbgrader's config loader

c.CourseDirectory.root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
c.CourseDirectory.course_id = "advanced-model-optimization"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "labs"
c.CourseDirectory.submitted_directory = "autograder/submitted"
c.CourseDirectory.autograded_directory = "autograder/autograded"
c.CourseDirectory.feedback_directory = "autograder/feedback"
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(os.path.dirname(os.path.abspath(__file__)), "gradebook.db")
# Data and helper files a lab ships beside its notebook are released with it; outputs are not.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".*", "outputs", "*.onnx",
                            "*.engine", "*.plan"]
# Student notebooks are released without outputs; hidden tests are stripped by nbgrader's
# ClearHiddenTests preprocessor (### BEGIN HIDDEN TESTS ... ### END HIDDEN TESTS).
c.ClearOutput.enabled = True
c.Execute.timeout = 900

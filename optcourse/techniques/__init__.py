"""One module per optimization technique, used alike by lectures, labs and the grader."""

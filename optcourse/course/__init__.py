"""Running the course: releasing labs, grading one notebook, checking a notebook, executing notebooks, and
the distribution students receive."""

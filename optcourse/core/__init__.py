"""Where files live, what hardware this is, and the set-up every notebook runs first."""

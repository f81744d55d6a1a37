"""Serving: the vLLM server process and the load generator that measures it."""

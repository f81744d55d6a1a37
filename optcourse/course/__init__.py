"""Course-level tooling: what the course publishes and how it is put together."""

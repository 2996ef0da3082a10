"""Top-level conftest: the netcheck plugin itself is loaded through its pytest11 entry point."""

"""netcheck's suites: run them from a clone with ``pytest suites/``, or installed with ``pytest --pyargs netcheck.suites``."""

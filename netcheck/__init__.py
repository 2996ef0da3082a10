"""netcheck: test and diagnose single-host container networking, packet by packet."""

__version__ = "0.1.0"

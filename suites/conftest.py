"""The suites run against every topology in play (--netcheck-topology; default: the built-ins)."""

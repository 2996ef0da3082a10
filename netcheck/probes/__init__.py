"""Probes: packets sent from inside a lab's namespaces, with their evidence."""

from netcheck.probes.engine import Prober

__all__ = ["Prober"]

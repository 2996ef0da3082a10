"""One model of the single-host datapath, for expectations and for causes.

``trace(state, flow)`` walks a flow through a state hop by hop, in the kernel's order, to a
disposition (delivered, dropped by a rule, rejected, no route, null-routed, neighbour
unreachable, no listener, reply not un-NATed, unknown), each step saying what decided it. The
state is the one planned from a spec (``netcheck.datapath.planned.planned``, both families) or the one read
back from the kernel (``netcheck.diagnose.datapath.observed``). Pure: no kernel access, no root.
"""

from __future__ import annotations

from netcheck.datapath.model import chain_verdict, trace
from netcheck.datapath.values import DISPOSITIONS, Flow, Iface, Listener, Namespace, Port, Route, State, Step, Trace

__all__ = ["DISPOSITIONS", "Flow", "Iface", "Listener", "Namespace", "Port", "Route", "State", "Step", "Trace", "chain_verdict", "trace"]

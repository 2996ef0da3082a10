"""The lab: a topology realised in the kernel, inside namespaces netcheck creates.

``Lab`` is a context manager, usable from pytest fixtures, scripts and the CLI alike::

    with Lab(spec.builtin("seed1")) as lab:
        lab.container_ns("netns0").links()

The package reads in build order: ``plan`` (a spec -> names, links, addresses, routes, rules;
pure), ``mode`` (where the host is: a sandbox namespace, or the namespace netcheck runs in),
``build`` (realise a plan, each object recorded in the ledger before it exists), ``teardown``
(release what the lab's users attached, then undo the ledger in reverse), and ``lab`` (the
``Lab`` object that joins them).
"""

from __future__ import annotations

from netcheck.lab.errors import LabError
from netcheck.lab.lab import Lab, has_net_admin
from netcheck.lab.mode import HostMode, RealHost, Sandbox

__all__ = ["HostMode", "Lab", "LabError", "RealHost", "Sandbox", "has_net_admin"]

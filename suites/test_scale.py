"""Scale: N containers on one bridge (``--netcheck-scale-n``, default 100), the full matrix.

Opt-in: deselected unless ``-m scale`` is given. ``.venv/bin/pytest -m scale suites/`` takes
about 3 s at N=100 and 10 s at N=250 (``--netcheck-scale-n 250``) on 2 cores: see
docs/performance.md.
"""

from __future__ import annotations

import time

import pytest

from netcheck.diagnosing import DiagnosingProber
from netcheck.probes.matrix import Matrix, describe
from netcheck.scale import bridge_topology

pytestmark = [pytest.mark.scale, pytest.mark.netcheck_property("scale")]


def test_every_container_reaches_every_other_on_one_bridge(fresh_lab, netcheck_settings, evidence, record_property):
    n = netcheck_settings.scale_n
    start = time.perf_counter()
    lab = fresh_lab(bridge_topology(n))
    built = time.perf_counter() - start
    with Matrix(lab, record=evidence, prober=DiagnosingProber(lab)) as matrix:
        result = matrix.bridge("br0")
    record_property("netcheck.scale", f"{n} containers built in {built:.2f} s; {result.pairs} pairs probed in {result.elapsed_s:.2f} s")
    assert result.pairs == n * (n - 1)
    if result.failing_pairs():
        pytest.fail(describe(result), pytrace=False)
    assert all(all(v for k, v in enumerate(row) if k != i) for i, row in enumerate(result.observed)), "a pair went unprobed"

"""Benchmarks of genneg and its installed plugins (``tox -e bench``, ``genneg bench``).

One process measures, side by side, for every installed small preset: oracle throughput,
sampler throughput of the baseline, stacked and distilled models, training step times, peak
memory and FLOPs against the machine's measured matmul rate; then the quality of a short run
and the cost of Gen-neG against rejection sampling. Plugins add cases through the
``register_benchmarks`` hook; each case receives the :class:`~genneg.bench.report.Report`.
"""

from genneg.bench.rejection import parallel_samples
from genneg.bench.report import Report
from genneg.bench.timing import timed

__all__ = ["Report", "parallel_samples", "timed"]

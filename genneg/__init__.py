"""genneg: oracle-assisted guidance of diffusion models (Gen-neG).

Plugins implement the hooks of :mod:`genneg.hookspecs`, marked with :data:`hookimpl`, and expose
themselves through the ``genneg`` entry-point group.
"""

from genneg.components import Dataset, DataSplit, Oracle, OracleResult, Splits
from genneg.plugins import hookimpl

__all__ = ["DataSplit", "Dataset", "Oracle", "OracleResult", "Splits", "hookimpl"]
__version__ = "0.1.0"

"""genneg: oracle-assisted guidance of diffusion models (Gen-neG).

Plugins implement the hooks of :mod:`genneg.hookspecs`, marked with :data:`hookimpl`, and expose
themselves through the ``genneg`` entry-point group.
"""

from genneg.threads import default_wait_policy

default_wait_policy()  # before torch loads OpenMP (genneg/threads.py)

from genneg.components import Dataset, DataSplit, Oracle, OracleResult, Splits  # noqa: E402
from genneg.plugins import hookimpl  # noqa: E402

__all__ = ["DataSplit", "Dataset", "Oracle", "OracleResult", "Splits", "hookimpl"]
__version__ = "0.1.0"

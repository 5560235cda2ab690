"""Sub-commands of ``genneg`` in modules of their own, registered by :mod:`genneg.builtin`."""

"""A custom oracle plugin: points must lie in the right half-plane (x >= 0).

Use it with any 2-D preset, e.g. ``genneg run checkerboard --set oracle.name=right-half``.
"""

from genneg import Oracle, OracleResult, hookimpl


class RightHalf(Oracle):
    categories = ("left-half",)

    def label(self, x, cond):
        valid = x[:, 0] >= 0
        return OracleResult(valid=valid, categories={"left-half": ~valid})


@hookimpl
def register_oracles(register):
    register("right-half", RightHalf)

"""Entry script of ``tox -e bench``: ``genneg bench`` over every installed plugin.

Arguments are those of ``genneg bench`` (``--help``), e.g. ``--run-dir runs/checkerboard`` to
take a domain's quality and infraction rates from a finished run instead of a reduced one.
"""

from genneg.commands.bench import bench_cmd

if __name__ == "__main__":
    bench_cmd.main(prog_name="benchmarks/run.py")

"""``python -m genneg.bench``: the same as ``genneg bench``."""

from genneg.commands.bench import bench_cmd

bench_cmd.main(prog_name="python -m genneg.bench")

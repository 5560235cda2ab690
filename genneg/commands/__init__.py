"""Sub-commands of ``genneg`` that live in their own modules (``bench``, ``sample``)."""


def register(cli) -> None:
    """Add this package's commands to the root ``click.Group``."""
    from genneg.commands.bench import bench_cmd
    from genneg.commands.sample import sample_cmd

    cli.add_command(bench_cmd)
    cli.add_command(sample_cmd)

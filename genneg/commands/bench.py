"""``genneg bench``: the benchmark suite of every installed plugin (``tox -e bench``)."""

from __future__ import annotations

import click


@click.command("bench")
@click.option(
    "--preset",
    "presets",
    multiple=True,
    help="Benchmark these presets (default: one small preset per plugin).",
)
@click.option(
    "--run-dir",
    "run_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="A finished run whose results give its domain's quality "
    "and infraction rates (repeatable; one per domain).",
)
@click.option(
    "--quality",
    "quality_presets",
    multiple=True,
    help="Presets whose quality is measured by a reduced run (default: every "
    "benchmarked one without --run-dir); --quality none for none.",
)
@click.option(
    "--fraction",
    type=float,
    default=0.25,
    show_default=True,
    help="Scale of the reduced quality runs' training and synthetic sets.",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="torch threads, fixed (0: the free cores, genneg/threads.py).",
)
@click.option(
    "--threading-steps",
    type=int,
    default=3000,
    show_default=True,
    help="Training steps of the threading case (alone / beside a busy process); 0 skips it.",
)
@click.option(
    "--gpu-batch",
    type=int,
    default=65536,
    show_default=True,
    help="With --device cuda: samples per sampler call of the GPU case (fp32, TF32, bf16); "
    "0 skips it.",
)
@click.option(
    "--roofline",
    "roofline_preset",
    default="checkerboard",
    show_default=True,
    help="The preset whose run is measured against the machine's matmul rate (every kind of "
    "step at its own batch); skipped where not installed; 'none' skips it.",
)
@click.option(
    "--out",
    default="bench-results",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Writes bench.json and bench.md here.",
)
def bench_cmd(
    presets,
    run_dirs,
    quality_presets,
    fraction,
    device,
    threads,
    threading_steps,
    gpu_batch,
    roofline_preset,
    out,
):
    """Benchmark oracles, samplers, training and quality of every installed plugin, and
    Gen-neG against rejection sampling."""
    from genneg.bench.suite import run_suite
    from genneg.bench.tables import markdown

    quality = None
    if quality_presets:
        quality = () if quality_presets == ("none",) else tuple(quality_presets)
    report = run_suite(
        presets=list(presets) or None,
        quality_presets=quality,
        run_dirs=run_dirs,
        reduce={"fraction": fraction},
        device=device,
        threads=threads or None,
        threading_steps=threading_steps,
        gpu_batch=gpu_batch,
        roofline_preset=None if roofline_preset == "none" else roofline_preset,
        log=lambda m: click.echo(m, err=True),
    )
    js, md = report.write(out)
    click.echo(markdown(report))
    click.echo(f"\nwrote {js} and {md}")

"""``quotagate demo``: the whole job on a sample spool, in one command."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from quotagate import demo as sample


def _run(ctx: click.Context, *args: str) -> int:
    click.secho("\n$ quotagate " + " ".join(args), bold=True)
    root = ctx.find_root().command
    result = root.main(list(args), prog_name="quotagate", standalone_mode=False)
    return result if isinstance(result, int) else 0


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to build the sample (must be empty or missing) [default: a new temp folder].",
)
@click.pass_context
def demo(ctx: click.Context, directory: Path | None) -> None:
    """Build a sample spool and SQLite store, scan them and show some checks."""
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="quotagate-demo-"))
    elif directory.exists() and any(directory.iterdir()):
        raise click.BadParameter(f"{directory} is not empty", param_hint="--dir")
    directory.mkdir(parents=True, exist_ok=True)
    built = sample.build(directory.resolve())
    click.echo(f"sample spool, quotas and config in {directory}")
    cfg = str(built.config)
    _run(ctx, "--config", cfg, "mailbox", "import", str(built.csv))
    _run(ctx, "--config", cfg, "scan")
    _run(ctx, "--config", cfg, "report")
    for address, size, shows in built.checks:
        args = ["--config", cfg, "check", address] + ([] if size is None else ["--size", str(size)])
        click.secho(f"\n# {shows}", fg="cyan")
        status = _run(ctx, *args)
        click.echo(f"(exit status {status})")
    click.echo(f"\nover-quota set for Exim's lsearch: {directory / 'overquota'}")
    click.echo(f"try: quotagate --config {cfg} report --format json")


def register(cli: click.Group) -> None:
    cli.add_command(demo)

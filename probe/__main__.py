"""``python -m probe …`` (and ``torchrun … -m probe extract|decode …``) runs the probe CLI."""

from probe.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="probe")

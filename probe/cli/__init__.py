"""The thin Click layer: parse options, call probe's core, print with rich or --json."""

"""One module per workflow, each with a ``run(...)`` that returns a typed result.

``decode``, ``interpolate``, ``perturb``, ``map``, ``compare``, ``extract`` and ``merge`` are what
``probe.decode`` … ``probe.merge`` are, and what the CLI commands call: the CLI parses options and prints,
nothing more. ``options`` holds the frozen option sets they share, ``common`` the loaders and target
conversion, ``extract_shards`` and ``decode_shards`` the part of a split extract or decode one process
does.
"""

"""One package per workflow, each with a ``run(...)`` that returns a typed result.

``decode``, ``walks`` (``interpolate``, ``perturb``, ``map``), ``compare``, ``extract`` and ``merge`` are what
``probe.decode`` … ``probe.merge`` are, and what the CLI commands call: the CLI parses options and prints,
nothing more. ``options`` holds the frozen option sets they share, ``common`` the encoder and target
conversion, ``parts`` the one protocol of a split run (``shard=``, torchrun) that extract and decode follow.
"""

"""probe: look inside vision networks by decoding their features back into images."""

__version__ = "0.1.0"

"""Which attributes a feature encodes: :mod:`.attributes` (what is measured on an image), :mod:`.samples` (the
decoded sample groups and their reference), :mod:`.scoring` (dispersions, persistence scores, bootstrap CIs)."""

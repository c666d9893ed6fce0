"""Feature-space geometry on plain arrays: :mod:`.paths` (interpolation), :mod:`.directions` (PCA, class-mean,
random), :mod:`.maps` (2-D UMAP/PCA maps), sharing :mod:`.features` (checks, hashes, the artifact cache)."""

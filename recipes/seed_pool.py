"""Ship a bundled prior's seed pool: its unguided samples on the presets' timesteps, for ``--pool``.

    python recipes/seed_pool.py --prior bundled:emoji-ddpm --n 2048
    python recipes/seed_pool.py --prior bundled:fashion-ddpm --n 2048

Writes probe/bundled/<name>/seed_pool.npz (uint8 images + the key they were drawn with: the prior's weights,
the chain, the seeds). ``probe decode --pool N`` (N <= the shipped count) then only computes the network's
features of the pool on first use instead of drawing it (2,048 x 50 UNet evaluations: ~25 CPU-minutes for
the bundled 32-px priors). The images come from the probe cache when a decode already drew them. Retrained
weights change the key and the shipped pool is ignored until this is run again.
"""

from __future__ import annotations

import argparse

from probe.diffusion.priors import load_prior
from probe.diffusion.schedules import PRESETS
from probe.models.bundled import BUNDLED_DIR
from probe.seed_pool import write_shipped_pool


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True, help="a bundled prior, e.g. bundled:emoji-ddpm")
    ap.add_argument("--n", type=int, default=2048, help="pool images to ship [2048]")
    ap.add_argument("--schedule", default="pooled", help="the preset whose chain the pool follows [pooled]")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if not args.prior.startswith("bundled:"):
        raise SystemExit(f"--prior {args.prior}: only bundled priors ship a pool (others are drawn and cached)")
    prior = load_prior(args.prior, device=args.device)
    path = write_shipped_pool(prior, PRESETS[args.schedule], args.n, BUNDLED_DIR / args.prior.split(":", 1)[1],
                              on_progress=lambda done, total: print(f"{done}/{total}", flush=True))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

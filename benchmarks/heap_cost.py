"""What probe.heap saves: the bare guided evaluation with glibc's heap defaults and with freed memory kept.

    python benchmarks/heap_cost.py                 # both bundled settings -> results/heap_cost.json

For each setting (``decode_speed.py``'s SETS) and heap (``PROBE_HEAP=system`` or probe's default), a fresh
process times ``decode_speed.time_bare`` — one forward + backward of the UNet and encoder to z, at the chains
per call ``--batch-size auto`` picks — and counts the kernel time and page faults of those calls. A fresh
process per row, because the heap setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(name: str, calls: int) -> dict:
    """One row, in this process (the parent sets PROBE_HEAP)."""
    import torch

    sys.path.insert(0, str(HERE))
    from decode_speed import SETS, time_bare

    from probe.diffusion.memory import auto_chains
    from probe.diffusion.priors import load_prior
    from probe.diffusion.sampler import concat_features
    from probe.heap import keep_freed_memory
    from probe.models.registry import load_encoder

    kept = keep_freed_memory()
    prior = load_prior(SETS[name][0], "cpu")
    encoder = load_encoder(SETS[name][1], device="cpu")
    imgs = torch.rand(2, prior.channels, prior.image_size, prior.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tvec = concat_features(encoder, encoder.resize(imgs)).float()
    chains = auto_chains(prior, encoder)
    time_bare(prior, encoder, chains, tvec, True, 1)  # warm-up: the heap grows once
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    per_eval = time_bare(prior, encoder, chains, tvec, True, calls)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"set": name, "heap": "kept (probe.heap)" if kept else "system", "chains_per_call": chains,
            "seconds_per_eval_fwd_bwd": per_eval, "calls": calls, "kernel_seconds": r1.ru_stime - r0.ru_stime,
            "user_seconds": r1.ru_utime - r0.ru_utime, "page_faults": r1.ru_minflt - r0.ru_minflt,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="fashion,emoji")
    ap.add_argument("--calls", type=int, default=4, help="timed calls of the bare loop per row")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "heap_cost.json")
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: measure one row here
    args = ap.parse_args(argv)
    if args.row:
        print(json.dumps(measure(args.row, args.calls)))
        return
    rows = []
    for name in args.sets.split(","):
        for heap in ("system", "kept"):
            env = {**os.environ, "PROBE_HEAP": "system" if heap == "system" else "probe"}
            done = subprocess.run([sys.executable, __file__, "--row", name, "--calls", str(args.calls)], env=env,
                                  check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
        sysrow, kept = rows[-2], rows[-1]
        print(f"{name}: {sysrow['seconds_per_eval_fwd_bwd']:.4f} -> {kept['seconds_per_eval_fwd_bwd']:.4f} s an "
              f"evaluation ({sysrow['seconds_per_eval_fwd_bwd'] / kept['seconds_per_eval_fwd_bwd']:.2f}x), kernel "
              f"{sysrow['kernel_seconds']:.1f} -> {kept['kernel_seconds']:.1f} s, page faults "
              f"{sysrow['page_faults']:,} -> {kept['page_faults']:,}")
    out = {"benchmark": "heap_cost", "load_average_start": list(os.getloadavg()), "rows": rows}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

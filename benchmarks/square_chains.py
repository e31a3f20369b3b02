"""Square's chains and proposals: the same queries in fewer rounds, side by side with one long search.

    python benchmarks/square_chains.py --run runs/<make-run-folder> --models teacher adv_train \
        --samples 500 --chains 1 2 4 8

For every model, on the audit's fixed subset of the Fashion-MNIST test set, Square (L-inf, eps 0.1
by default) with ``--queries`` queries per input as one search (``chains=1``) and as ``k`` chains
of ``queries // k`` queries run side by side (``lit_defense.width``), all with the same seed.
``--settings 1000x1 2000x4`` compares settings of other total queries (4 chains of 500 queries:
twice the queries, half the rounds); a third number is the proposals per step of one search
(``2000x1x4``: 500 steps of 4 candidates each, ``Square(proposals=4)``). Prints, per setting, the inputs it fooled, the paired comparison with one search (how many
only one of the two fooled: the exact McNemar p-value of ``lit_defense.stats.paired``), and the
rounds and rows counted by ``lit_defense.cost.CostCounter``. A chain setting is as strong as one
search when it fools as many inputs and the paired comparison does not say otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _data import benchmark_datamodule

from lit_defense.attacks import Square
from lit_defense.attacks.base import fooled_by
from lit_defense.cost import CostCounter
from lit_defense.data import fixed_subset
from lit_defense.modules.loading import module_from_checkpoint
from lit_defense.stats import paired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a `make run` folder (runs/<timestamp>-<profile>)")
    parser.add_argument("--models", nargs="+", default=["teacher", "adv_train"])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--settings", nargs="+", metavar="QUERIESxCHAINS[xPROPOSALS]",
                        help="instead of --queries and --chains: total queries and chains per setting, and "
                             "optionally proposals per step, e.g. 1000x1 2000x4 2000x1x4 (the first is the one "
                             "the others are compared with)")
    parser.add_argument("--output", help="write the rows as JSON here")
    args = parser.parse_args()
    dm = benchmark_datamodule("fashion_mnist", stages=("test",))
    x, y = fixed_subset(dm.test_set, args.samples, seed=0)
    rows = []
    print(f"{args.samples} Fashion-MNIST test images, linf eps={args.eps:g}, {args.queries} queries per input")
    print(f"{'model':<14}{'queries':>8}{'chains':>7}{'props':>6}{'fooled':>8}{'only this':>10}{'only 1':>8}{'p weaker':>9}{'rounds':>8}{'rows':>10}")
    for name in args.models:
        ckpt = Path(args.run) / name / "version_0" / "checkpoints" / "last.ckpt"
        model = module_from_checkpoint(ckpt).requires_grad_(False)
        with torch.no_grad():
            keep = model(x).argmax(1) == y
        xs, ys = x[keep], y[keep]
        base = None
        settings = [(*(int(v) for v in s.split("x")), 1)[:3] for s in args.settings] if args.settings else \
            [(args.queries, c, 1) for c in args.chains]
        for queries, chains, proposals in settings:
            attack = Square(eps=args.eps, n_queries=queries, chains=chains, proposals=proposals, seed=0)
            with CostCounter().attached(model) as counter:
                adv = attack(model, xs, ys)
            fooled = fooled_by(model, attack.threat, adv, xs, ys).cpu()
            base = fooled if base is None else base
            # b: fooled by one search only, c: by this setting only; p: McNemar's test of "this one is weaker"
            pair = paired(~fooled, ~base)
            row = {"model": name, "queries": queries, "chains": chains, "proposals": proposals, "inputs": int(xs.shape[0]), "fooled": int(fooled.sum()),
                   "only_this": int(pair.c), "only_one_search": int(pair.b), "p_weaker": pair.p_value,
                   **counter.cost.to_dict()}
            rows.append(row)
            print(f"{name:<14}{queries:>8}{chains:>7}{proposals:>6}{row['fooled']:>8}{row['only_this']:>10}{row['only_one_search']:>8}"
                  f"{row['p_weaker']:>9.3f}{row['rounds']:>8}{row['work']:>10}", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

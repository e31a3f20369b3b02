"""The same checkpoints audited on each of torch's CPU numeric paths: do verdicts or claims flip?

Float reductions round differently with torch's plain kernels (``ATEN_CPU_CAPABILITY=default``),
AVX2 and AVX-512, so borderline inputs can fall to an attack on one path and not on another. A
verdict or claim must not depend on that. This script audits the six models of a ``make run``
folder (the quick profile's audit settings, or ``--profile``) once per capability, each in its own
process, then prints side by side per model: the worst case at eps 0.1 with its 95% interval, the
verdict, and every claim's state, and whether any of them differs between paths.

    .venv/bin/python benchmarks/numeric_paths.py --run runs/<make-run folder> [--caps default avx2 avx512]

Only capabilities the CPU has are run (``grep -o 'avx512[a-z_]*' /proc/cpuinfo``). Exit code 1
when a verdict or claim flips.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import sys
from pathlib import Path
from lit_defense.claims import add_claims_to_report
from lit_defense.pipeline import audit_stages, load_profile, measure_for_claims
profile, out = load_profile(sys.argv[1]), Path(sys.argv[2])
audit_stages(profile, out, log=lambda line: None)
measure_for_claims(profile, out)
add_claims_to_report(out)
"""


def available(caps: list[str]) -> list[str]:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    has = {"default": True, "avx2": " avx2" in flags, "avx512": "avx512f" in flags}
    return [c for c in caps if has.get(c, False)]


def audit_on(cap: str, run: Path, out: Path, profile: str) -> tuple[dict, float]:
    from lit_defense.pipeline import STAGES

    out.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:  # the audit reads <folder>/<stage>/version_0/checkpoints/last.ckpt
        link = out / stage.name
        if not link.exists():
            link.symlink_to((run / stage.name).resolve(), target_is_directory=True)
    start = time.perf_counter()
    env = {**os.environ, "ATEN_CPU_CAPABILITY": cap}
    subprocess.run([sys.executable, "-c", CHILD, profile, str(out)], check=True, env=env)
    return json.loads((out / "report.json").read_text()), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a `make run` folder (runs/<timestamp>-quick)")
    parser.add_argument("--caps", nargs="+", default=["default", "avx2", "avx512"])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", default=None, help="where the audits go (default: <run>/numeric_paths)")
    args = parser.parse_args()
    run = Path(args.run)
    caps = available(args.caps)
    out = Path(args.out) if args.out else run / "numeric_paths"
    reports = {}
    for cap in caps:
        reports[cap], seconds = audit_on(cap, run, out / cap, args.profile)
        print(f"{cap}: audited in {seconds:.0f} s", flush=True)
    flips = 0
    names = [m["name"] for m in reports[caps[0]]["models"]]
    print(f"\n| model | {' | '.join(f'worst @0.1 ({c})' for c in caps)} | {' | '.join(f'verdict ({c})' for c in caps)} |")
    print("|---|" + "---:|" * len(caps) + "---|" * len(caps))
    for name in names:
        per = {c: next(m for m in reports[c]["models"] if m["name"] == name) for c in caps}
        worst = [per[c]["worst_case"]["0.1"] for c in caps]
        verdicts = [per[c]["gradient_masking"]["state"] for c in caps]
        flips += len(set(verdicts)) > 1
        cells = [f"{100 * w['value']:.1f}% [{100 * w['ci'][0]:.1f}, {100 * w['ci'][1]:.1f}]" for w in worst]
        print(f"| {name} | {' | '.join(cells)} | {' | '.join(verdicts)} |")
        # the worst cases of two paths must lie inside each other's 95% intervals
        for w in worst:
            if not (worst[0]["ci"][0] <= w["value"] <= worst[0]["ci"][1]):
                print(f"  {name}: worst case {w['value']:.3f} outside the first path's interval {worst[0]['ci']}")
                flips += 1
    print(f"\n| claim | {' | '.join(caps)} |")
    print("|---|" + "---|" * len(caps))
    for claim in [c["claim"] for c in reports[caps[0]]["claims"]]:
        states = [next(c["state"] for c in reports[cap]["claims"] if c["claim"] == claim) for cap in caps]
        flips += len(set(states)) > 1
        print(f"| {claim} | {' | '.join(states)} |")
    print(f"\nflips between numeric paths: {flips}")
    return 1 if flips else 0


if __name__ == "__main__":
    raise SystemExit(main())

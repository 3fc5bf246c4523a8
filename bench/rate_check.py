"""One method of the warm-start study at a learning rate its sweep did not choose: the study's recipe,
start, 48 steps, seed and evaluation, only the rate changed, in its own folder outside the study's
(so ``bench/reproduce.py results`` never mixes it into the table). docs/RESULTS.md quotes the runs it
made for GRPO and LUFFY at 1e-5 ("The learning rate, and GRPO"). Resumable like the study.

    nohup python bench/rate_check.py grpo 1e-5 > bench/out/diag/grpo_1e-5.log 2>&1 &
    python bench/rate_check.py grpo 1e-5 --seed 1     # another seed

Output: ``bench/out/diag/METHOD-lrRATE-seedSEED/`` (``eval-greedy/`` and ``eval-sampled/`` hold the scores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (a script beside this one, not a package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=sorted(reproduce.WARM_START.methods))
    parser.add_argument("learning_rate", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the study's jobs)")
    parser.add_argument("--root", type=Path, default=reproduce.DEFAULT_ROOT, help="the study's root (data, start)")
    args = parser.parse_args()
    study = reproduce.WARM_START
    reproduce.use_threads(args.threads)
    reproduce.prepare_start(study, args.root)
    out = args.root.parent / "diag" / f"{args.method}-lr{args.learning_rate:g}-seed{args.seed}"
    reproduce.train_and_evaluate(study, args.root, args.method, out, args.seed, args.learning_rate)


if __name__ == "__main__":
    main()

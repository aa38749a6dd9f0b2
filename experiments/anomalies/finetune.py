"""Short CPU fine-tunes of compass-cpu-mini's joint stage: a control (the recipe's CRD loss) against the same
budget with a prediction-fidelity term (docs/prediction.md, "What a fine-tune with a fidelity term does").

    python experiments/anomalies/finetune.py control  --steps 600 --run-dir runs/anomalies/control
    python experiments/anomalies/finetune.py fidelity --steps 600 --run-dir runs/anomalies/fidelity --mu 0.1

Both start from the shipped compass-cpu-mini (base frozen, residual codec and LIFF trained), with the recipe
`cpu-mini`'s joint stage (batch 8 of 128x128, 2-4 layers at factors U(1, 4)), lr 1e-4 then 3e-5 for the last
fifth, the same seed, data order and step count, one thread. The fidelity variant adds to the CRD loss, for
every enhancement layer k, mu * lambda(q) * 255^2 * MSE(prediction^k, I^k): the prediction itself is asked to
be close to its target (its DC above all), with mu = 0.1 a tenth of the weight the reconstruction gets.
"""
from __future__ import annotations

import argparse
import sys

import torch

from compass.quality import q_to_lambda
from compass.train import stages
from compass.train.config import load_recipe
from compass.train.loop import train


class FidelityJointStage(stages.JointStage):
    """JointStage with mu * lambda * 255^2 * MSE(prediction, target) added per enhancement layer."""

    name = "joint"
    mu = 0.1

    def crd_loss(self, layers, q):
        loss, out, top_mse = super().crd_loss(layers, q)
        if self.model.training:
            lam = q_to_lambda(q, self.model.residual.config.lambda_range) * 255**2
            for k in range(1, len(layers)):
                mse = (out["pred"][k] - layers[k]).pow(2).flatten(1).mean(1)
                loss = loss + self.mu * (lam * mse).mean()
        return loss, out, top_mse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", choices=["control", "fidelity"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--mu", type=float, default=0.1)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--init", default="compass-cpu-mini")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    recipe = load_recipe("cpu-mini")
    joint = recipe["stages"]["joint"]
    # every module comes from --init: no run folders of the recipe's own stages are needed
    joint.update(base_from=None, residual_from=None, liff_from=None, track_base=False,
                 lr=1e-4, lr_final=3e-5, final_fraction=0.2)
    recipe["train"]["val_every"] = 10**9  # validated once, at the end (and by evaluate.py)
    if args.variant == "fidelity":
        FidelityJointStage.mu = args.mu
        stages.STAGES["joint"] = FidelityJointStage
    train(recipe, "joint", args.run_dir, resume=args.resume, steps=args.steps, threads=1,
          init=None if args.resume else args.init, progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

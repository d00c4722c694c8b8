"""Conditional generation study: do generated trials carry the requested reach direction?

    python -m ldns_fast.train --data reach.h5 --set denoiser.cond_drop=0.1 --out runs/reach
    python benchmarks/reach_direction.py runs/reach reach.h5

(``reach.h5`` from ``ldns_fast.data.reach.write_reach``.) A ridge decoder trained on the real training
split decodes the direction of trials generated for the test split's directions (vector condition only,
no behaviour); the mean circular error is printed per guidance scale, beside the decoder's error on the
real test trials and the chance level (shuffled directions).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ldns_fast.data import read_dataset
from ldns_fast.decoding import DirectionDecoder, circular_error_degrees
from ldns_fast.pipeline import LDNS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpm++")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0])
    args = parser.parse_args()
    data = read_dataset(args.data)
    directions = np.arctan2(data.conditions[:, 1], data.conditions[:, 0])
    train, test = data.split_codes == 0, data.split_codes == 2
    decoder = DirectionDecoder().fit(data.spikes[train], directions[train])
    real = circular_error_degrees(decoder.predict(data.spikes[test]), directions[test]).mean()
    chance = circular_error_degrees(decoder.predict(data.spikes[test]),
                                    np.random.default_rng(0).permutation(directions[test])).mean()
    print(f"real test trials: {real:.1f} deg; shuffled directions: {chance:.1f} deg")
    model = LDNS.load(args.run)
    conditions = torch.as_tensor(data.conditions[test], dtype=torch.float32)
    for scale in args.scales:
        out = model.sample(len(conditions), length=data.n_bins, sampler=args.sampler, steps=args.steps, seed=0,
                           conditions=conditions, guidance_scale=scale)
        spikes = out.spikes.transpose(1, 2).numpy()
        error = circular_error_degrees(decoder.predict(spikes), directions[test]).mean()
        print(f"generated ({args.sampler}-{args.steps}, guidance {scale}): {error:.1f} deg")


if __name__ == "__main__":
    main()

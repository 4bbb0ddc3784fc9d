"""jobs.preprocess: clean, split, augment and normalise a data set into the `dataset` artifact.

Order matters: the split comes before augmentation (shifted copies of a test image must not land in
training) and the normalisation statistics come from the training split only (no test leakage).
"""

from __future__ import annotations

import numpy as np

from lhorch.jobs import data
from lhorch.jobs.cli import coerce, main
from lhorch.jobs.context import StageContext
from lhorch.jobs.params import PreprocessParams


def run(params: PreprocessParams | dict | None, ctx: StageContext) -> dict:
    p = coerce(PreprocessParams, params)
    X, y_raw, source = data.load_raw(p.dataset)
    X, y_raw, cleaning = data.clean(X, y_raw)
    y, class_names = data.encode_labels(y_raw)
    if len(class_names) < 2:
        raise data.DataError(f"{source}: needs at least two classes, found {len(class_names)}")
    if p.limit and p.limit < len(y):
        from sklearn.model_selection import train_test_split  # deferred: only `limit` needs scikit-learn

        keep, _ = train_test_split(np.arange(len(y)), train_size=p.limit, random_state=p.seed, stratify=y)
        keep = np.sort(keep)
        X, y = X[keep], y[keep]
    parts = data.split(y, p.val_fraction, p.test_fraction, p.seed)
    raw = {name: (X[idx], y[idx]) for name, idx in parts.items()}

    # Statistics of the original training samples, before augmentation adds noise to them.
    mean = raw["train"][0].mean(axis=0)
    std = raw["train"][0].std(axis=0)
    std[std < 1e-8] = 1.0  # constant features (e.g. digits' border pixels) stay at 0 instead of dividing by 0
    if p.augment:
        rng = np.random.default_rng(p.seed)
        raw["train"] = data.augment(*raw["train"], p.augment_copies, p.shift_pixels, p.noise_std, rng)

    arrays = {}
    for name, (Xs, ys) in raw.items():
        arrays[f"X_{name}"] = ((Xs - mean) / std).astype(np.float32)
        arrays[f"y_{name}"] = ys.astype(np.int64)
    side = data.image_side(X.shape[1])
    meta = {
        "source": source,
        "n_features": int(X.shape[1]),
        "n_classes": len(class_names),
        "class_names": class_names,
        "image_shape": [side, side] if side else None,
        "sizes": {name: int(len(arrays[f"y_{name}"])) for name in data.SPLITS},
        "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
        "cleaning": cleaning,
        "params": p.model_dump(),
    }
    meta = data.save_dataset(ctx.output("dataset"), arrays, meta)
    return {"source": source, "n_classes": meta["n_classes"], "n_features": meta["n_features"],
            "sizes": meta["sizes"], "cleaning": cleaning, "sha256": meta["sha256"]}


if __name__ == "__main__":
    main(PreprocessParams, run, "jobs.preprocess", __doc__)

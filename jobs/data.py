"""Data sets: loading the user's data or the bundled digits, and the `dataset` artifact format.

The artifact is a folder with ``data.npz`` (X_train, y_train, X_val, y_val, X_test, y_test; float32
features already normalised, int64 labels 0..n_classes-1) and ``meta.json`` (normalisation stats,
class names, sizes, image shape, content sha). Every later job reads it through ``load_dataset``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """The user's data cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Dataset:
    arrays: dict[str, np.ndarray]
    meta: dict

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.arrays[f"X_{name}"], self.arrays[f"y_{name}"]

    @property
    def n_classes(self) -> int:
        return int(self.meta["n_classes"])

    @property
    def n_features(self) -> int:
        return int(self.meta["n_features"])


def load_raw(source: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(X float64 2-D, y raw labels, description) from `digits` or a .csv / .npz path."""
    if source == "digits":
        from sklearn.datasets import load_digits  # deferred: scikit-learn takes about a second to import

        d = load_digits()  # ships inside scikit-learn: never downloads
        return d.data.astype(np.float64), d.target, "sklearn digits"
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"dataset {source!r}: no such file (use `digits` or a path to a .csv or .npz)")
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z or "y" not in z:
                raise DataError(f"{path}: a .npz data set needs arrays `X` and `y` (found: {', '.join(z.files)})")
            X, y = np.asarray(z["X"], dtype=np.float64), np.asarray(z["y"])
        return X.reshape(len(X), -1), y.reshape(-1), str(path)
    if path.suffix.lower() == ".csv":
        return (*_read_csv(path), str(path))
    raise DataError(f"{path}: unsupported format {path.suffix!r}; use .csv (last column = label) or .npz (X, y)")


def _to_float(cell: str) -> float:
    cell = cell.strip()
    return float(cell) if cell and cell.lower() not in ("nan", "na", "null") else math.nan


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows:
        try:  # a header is a first row whose feature cells are not numbers
            [_to_float(c) for c in rows[0][:-1]]
        except ValueError:
            rows = rows[1:]
    if not rows or len(rows[0]) < 2:
        raise DataError(f"{path}: needs at least one feature column and a label column (the last)")
    width = len(rows[0])
    X = np.full((len(rows), width - 1), np.nan)
    y = []
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: row {i + 1} has {len(row)} columns, expected {width}")
        try:
            X[i] = [_to_float(c) for c in row[:-1]]
        except ValueError as exc:
            raise DataError(f"{path}: row {i + 1}: {exc}") from None
        y.append(row[-1].strip())
    return X, np.asarray(y)


def clean(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Drop rows with a missing feature or label, then exact duplicates (first kept, order kept)."""
    labels = y.astype(str)
    ok = ~np.isnan(X).any(axis=1) & (np.char.strip(labels) != "") & (np.char.lower(labels) != "nan")
    X, y = X[ok], y[ok]
    codes = np.unique(y.astype(str), return_inverse=True)[1].reshape(-1, 1)
    _, first = np.unique(np.concatenate([X, codes], axis=1), axis=0, return_index=True)
    keep = np.sort(first)
    stats = {"dropped_missing": int((~ok).sum()), "dropped_duplicates": int(len(X) - len(keep))}
    return X[keep], y[keep], stats


def encode_labels(y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    names = np.unique(y)
    if np.issubdtype(names.dtype, np.str_):
        try:  # numeric labels read from a CSV sort as numbers, not as text
            names = names[np.argsort(names.astype(float))]
        except ValueError:
            pass
    index = {v: i for i, v in enumerate(names.tolist())}
    return np.asarray([index[v] for v in y.tolist()], dtype=np.int64), [str(n) for n in names.tolist()]


def split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Indices of a seeded, stratified train/val/test split."""
    from sklearn.model_selection import train_test_split  # deferred: scikit-learn is slow to import

    idx = np.arange(len(y))
    try:
        rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed + 1,
                                      stratify=y[rest])
    except ValueError as exc:
        raise DataError(f"cannot split the data by class: {exc} (each class needs several samples)") from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def image_side(n_features: int) -> int | None:
    side = int(round(math.sqrt(n_features)))
    return side if side * side == n_features and side >= 4 else None


def augment(X: np.ndarray, y: np.ndarray, copies: int, shift: int, noise_std: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Originals plus ``copies`` shifted (square images only) and noisy versions of each sample."""
    side = image_side(X.shape[1])
    span = float(X.max() - X.min()) or 1.0
    out_X, out_y = [X], [y]
    for _ in range(copies):
        A = X.copy()
        if side and shift:
            imgs = A.reshape(len(A), side, side)
            dx = rng.integers(-shift, shift + 1, len(A))
            dy = rng.integers(-shift, shift + 1, len(A))
            # A zero-filled shift, not a wrap-around roll: digits must not reappear on the other side.
            for i in range(len(A)):
                imgs[i] = _shift(imgs[i], int(dy[i]), int(dx[i]))
            A = imgs.reshape(len(A), -1)
        if noise_std:
            A = A + rng.normal(0.0, noise_std * span, A.shape)
        out_X.append(A)
        out_y.append(y)
    return np.concatenate(out_X), np.concatenate(out_y)


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape
    target = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
    source = (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
    out[target] = img[source]
    return out


def content_sha(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def save_dataset(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "sha256": content_sha(arrays)}
    np.savez_compressed(folder / "data.npz", **arrays)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_dataset(folder: Path) -> Dataset:
    folder = Path(folder)
    if not (folder / "data.npz").exists():
        raise DataError(f"{folder}: not a dataset artifact (no data.npz); it is written by jobs.preprocess")
    with np.load(folder / "data.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads((folder / "meta.json").read_text())
    return Dataset(arrays=arrays, meta=meta)

"""Write a small, real prediction dump: scikit-learn digits, out-of-fold predictions.

Every row's prediction comes from a model that did not see that row (5-fold
cross-validation), so the losses are honest held-out losses. Columns:

- ``probs``: Array[float64, 10], predicted class probabilities;
- ``logits``: Array[float64, 10], the model's decision function (softmax = probs);
- ``label``: int64 true digit; ``ink``: "light" / "medium" / "heavy" (tercile of
  total pixel intensity), a group column for grouped evaluation.

Run: ``python examples/make_digits_dump.py`` (needs scikit-learn).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

OUTPUT = Path(__file__).parent / "data" / "digits_predictions.parquet"


def main() -> None:
    digits = load_digits()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    logits = cross_val_predict(
        model, digits.data, digits.target, cv=folds, method="decision_function"
    )
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    ink = digits.data.sum(axis=1)
    cuts = np.quantile(ink, [1 / 3, 2 / 3])
    group = np.array(["light", "medium", "heavy"])[np.searchsorted(cuts, ink)]
    frame = pl.DataFrame(
        {
            "probs": pl.Series(probs.tolist(), dtype=pl.Array(pl.Float64, 10)),
            "logits": pl.Series(logits.tolist(), dtype=pl.Array(pl.Float64, 10)),
            "label": digits.target.astype(np.int64),
            "ink": group,
        }
    )
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(OUTPUT)
    print(f"wrote {len(frame)} rows to {OUTPUT}")


if __name__ == "__main__":
    main()

"""Which of two models is better, by how much, with what confidence, and how calibrated?

Two scikit-learn models on the digits data that ships with scikit-learn: a logistic
regression (the baseline) and a random forest (the candidate). Every row's prediction
comes from a model that did not see it (5-fold cross-validation); both models' held-out
probabilities go into one Parquet dump, which ``xs.compare`` reads in bounded batches:
a *paired* comparison (both models on the same rows), plus reliability bins for each
model in the same pass.

Run: ``python examples/compare_models.py`` (needs scikit-learn).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import xentstream as xs


def held_out_probabilities() -> pl.DataFrame:
    digits = load_digits()
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    models = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000)),
        "forest": RandomForestClassifier(n_estimators=200, random_state=0, n_jobs=1),
    }
    columns = {
        name: cross_val_predict(model, digits.data, digits.target, cv=folds, method="predict_proba")
        for name, model in models.items()
    }
    return pl.DataFrame(
        {
            **{
                name: pl.Series(p.tolist(), dtype=pl.Array(pl.Float64, 10))
                for name, p in columns.items()
            },
            "label": digits.target.astype(np.int64),
        }
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        dump = Path(directory) / "predictions.parquet"
        held_out_probabilities().write_parquet(dump)
        report = xs.compare(
            dump,
            xs.CrossEntropy(calibration_bins=10),
            preds="forest",
            baseline_preds="logistic",
            target="label",
            batch_rows=500,  # a dump of any size streams the same way
        )
    low, high = report.ci95
    lines = {
        "rows compared": f"{report.count}",
        "log loss, forest": f"{report.model.loss:.4f} +/- {report.model.stderr:.4f}",
        "log loss, logistic": f"{report.baseline.loss:.4f} +/- {report.baseline.stderr:.4f}",
        "forest - logistic": f"{report.difference:+.4f} nats per row",
        "paired 95% interval": f"[{low:+.4f}, {high:+.4f}]  (stderr {report.stderr:.4f})",
        "z, two-sided p-value": f"{report.z:.2f}, {report.p_value:.2g}",
        "rows where forest wins": f"{report.model_better:.1%}",
        "rows where logistic wins": f"{report.baseline_better:.1%}",
    }
    for label, value in lines.items():
        print(f"{label + ':':<26}{value}")
    print()
    print(f"{'':<26}{'forest':>10}{'logistic':>10}")
    for name in ("accuracy", "ece", "mce", "brier"):
        print(
            f"{name:<26}{getattr(report.model, name):>10.4f}{getattr(report.baseline, name):>10.4f}"
        )
    for name in ("reliability", "resolution", "log_loss_calibration"):
        a, b = getattr(report.model.calibration, name), getattr(report.baseline.calibration, name)
        print(f"{name:<26}{a:>10.4f}{b:>10.4f}")
    print()
    print(report.verdict(model="forest", baseline="logistic"))


if __name__ == "__main__":
    main()

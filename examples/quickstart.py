"""Evaluate the shipped digits prediction dump batch by batch and print the report.

The dump (``examples/data/digits_predictions.parquet``, made by
``make_digits_dump.py``) holds held-out predictions of a scikit-learn classifier.
The metric sees it in batches of 256 rows, as it would see a dump too large for
memory, and ends with the same bits as the one-shot function over all rows.

Run: ``python examples/quickstart.py``
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

import xentstream as xs

DUMP = Path(__file__).parent / "data" / "digits_predictions.parquet"


def main() -> None:
    frame = pl.read_parquet(DUMP)
    metric = xs.CrossEntropy(num_classes=10, input="logits", per_class=True, window=256)
    for batch in frame.iter_slices(n_rows=256):
        metric.update(batch["logits"], batch["label"])
        print(f"rows {metric.rows_seen:5d}  running loss {metric.value:.6f}")
    report = metric.compute()
    one_shot = xs.cross_entropy(frame["logits"], frame["label"], input="logits")
    print()
    print(f"loss        {report.loss:.6f} nats ({report.bits:.4f} bits)")
    print(f"95% CI      [{report.ci95[0]:.6f}, {report.ci95[1]:.6f}]  stderr {report.stderr:.6f}")
    print(f"perplexity  {report.perplexity:.4f}")
    print(f"accuracy    {report.accuracy:.4f}")
    print(f"entropy     {report.entropy:.6f}   normalized entropy {report.normalized_entropy:.4f}")
    print(f"last 256    {report.window_loss:.6f}")
    print(report.per_class)
    print(f"streamed == one-shot (bitwise): {report.loss == one_shot}")


if __name__ == "__main__":
    main()

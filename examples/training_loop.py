"""Log a running training loss while a model trains: xentstream in a training loop.

A multinomial logistic regression (softmax regression) on scikit-learn's digits,
trained with plain numpy minibatch gradient descent. Every epoch feeds each
minibatch's logits (computed for the gradient step anyway) to an
``xs.CrossEntropy(input="logits", window=...)``: the epoch's running training loss
with its standard error, and the loss over the last ``WINDOW`` rows, cost no extra
pass over the data. The held-out validation loss is a one-shot ``xs.cross_entropy``.

Run: ``python examples/training_loop.py`` (needs scikit-learn).
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

import xentstream as xs

EPOCHS = 12
BATCH_ROWS = 64
LEARNING_RATE = 0.1
L2 = 1e-4
WINDOW = 256


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def main() -> None:
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    n_train = int(0.8 * len(order))
    train, valid = order[:n_train], order[n_train:]
    mean = digits.data[train].mean(axis=0)
    scale = digits.data[train].std(axis=0) + 1.0  # some pixels are constant
    features = (digits.data - mean) / scale
    labels = digits.target.astype(np.int64)
    n_classes = 10

    weights = np.zeros((features.shape[1], n_classes))
    bias = np.zeros(n_classes)
    print(f"digits: {len(train)} training rows, {len(valid)} validation rows")
    for epoch in range(1, EPOCHS + 1):
        running = xs.CrossEntropy(num_classes=n_classes, input="logits", window=WINDOW)
        shuffled = train[rng.permutation(len(train))]
        for start in range(0, len(train), BATCH_ROWS):
            rows = shuffled[start : start + BATCH_ROWS]
            x, y = features[rows], labels[rows]
            logits = x @ weights + bias
            running.update(logits, y)
            # gradient of the mean cross-entropy: softmax minus one-hot
            grad = softmax(logits)
            grad[np.arange(len(y)), y] -= 1.0
            grad /= len(y)
            weights -= LEARNING_RATE * (x.T @ grad + L2 * weights)
            bias -= LEARNING_RATE * grad.sum(axis=0)
        report = running.compute()
        valid_logits = features[valid] @ weights + bias
        valid_loss = xs.cross_entropy(valid_logits, labels[valid], input="logits")
        valid_accuracy = float(np.mean(valid_logits.argmax(axis=1) == labels[valid]))
        print(
            f"epoch {epoch:2d}  train {report.loss:.6f} +/- {report.stderr:.6f}  "
            f"last-{WINDOW} {report.window_loss:.6f}  valid {valid_loss:.6f}  "
            f"valid-accuracy {valid_accuracy:.4f}"
        )


if __name__ == "__main__":
    main()

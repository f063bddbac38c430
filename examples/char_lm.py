"""A tiny character-level language model, evaluated from both kinds of dumps.

Trains (a few seconds on a CPU) a small torch model on the docstrings of Python's own
standard library (no download), one document per module, then evaluates held-out
modules twice:

- a full-logits dump, (tokens, vocabulary) logits and the next character, through
  ``xs.CrossEntropy(input="logits")``;
- a token log-probability dump, the log-probability of the character that came (what
  evaluation harnesses keep), through ``xs.TokenCrossEntropy`` with document ids and
  the UTF-8 bytes of each character: perplexity, bits per byte, per-document results
  and standard errors clustered by document.

Both paths give the same perplexity within SPEC section 3 (float64 per-row losses).

Run: ``python examples/char_lm.py``.
"""

from __future__ import annotations

import importlib
import inspect
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import torch

import xentstream as xs

CONTEXT = 12
TRAIN_MODULES = (
    "argparse collections functools itertools json pathlib re shutil string textwrap "
    "threading typing unittest urllib.parse warnings zipfile csv dataclasses enum heapq"
).split()
HELD_OUT = "calendar fractions gzip operator pprint shlex statistics tempfile".split()


def docstrings(name: str) -> str:
    """A module's docstring and those of its public functions and classes: one document."""
    module = importlib.import_module(name)
    parts = [inspect.getdoc(module) or ""]
    for attribute, value in sorted(vars(module).items()):
        if attribute.startswith("_") or getattr(value, "__module__", None) != name:
            continue
        if inspect.isfunction(value) or inspect.isclass(value):
            parts.append(inspect.getdoc(value) or "")
    return "\n\n".join(p for p in parts if p)


class CharModel(torch.nn.Module):
    """The next character from the previous CONTEXT characters (embedding + MLP)."""

    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocabulary, 16)
        self.hidden = torch.nn.Linear(CONTEXT * 16, 192)
        self.out = torch.nn.Linear(192, vocabulary)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(context).flatten(1))))


def windows(codes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous CONTEXT codes, next code) for every character of a document (0-padded)."""
    padded = np.concatenate([np.zeros(CONTEXT, dtype=np.int64), codes])
    index = np.arange(len(codes))[:, None] + np.arange(CONTEXT)[None, :]
    return torch.from_numpy(padded[index]), torch.from_numpy(codes)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the same bits on every run
    train_text = "\n\n".join(docstrings(name) for name in TRAIN_MODULES)
    held_out = {name: docstrings(name) for name in HELD_OUT}
    alphabet = sorted(set(train_text))
    code = {c: i + 1 for i, c in enumerate(alphabet)}  # 0: padding / unseen character
    vocabulary = len(alphabet) + 1

    def encode(text: str) -> np.ndarray:
        return np.array([code.get(c, 0) for c in text], dtype=np.int64)

    contexts, targets = windows(encode(train_text))
    model = CharModel(vocabulary)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    steps = 300
    for _ in range(steps):
        batch = torch.randint(0, len(targets), (256,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(contexts[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"trained {parameters} parameters for {steps} steps on {len(train_text)} characters")

    # The dumps an evaluation run writes: full logits, and target log-probabilities.
    logit_rows, logprob_rows = [], []
    with torch.no_grad():
        for name, text in held_out.items():
            context, target = windows(encode(text))
            logits = model(context).double()
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
            logit_rows.append(
                pl.DataFrame(
                    {"doc_id": name, "logits": logits.numpy(), "target": target.numpy()},
                    schema_overrides={"logits": pl.Array(pl.Float64, vocabulary)},
                )
            )
            logprob_rows.append(
                pl.DataFrame(
                    {
                        "doc_id": name,
                        "lp": logprobs.numpy(),
                        "bytes": [len(c.encode()) for c in text],
                    }
                )
            )
    with tempfile.TemporaryDirectory() as folder:
        logits_path = Path(folder) / "logits.parquet"
        tokens_path = Path(folder) / "tokens.parquet"
        pl.concat(logit_rows).write_parquet(logits_path)
        pl.concat(logprob_rows).write_parquet(tokens_path)
        full = xs.evaluate(
            logits_path,
            xs.CrossEntropy(input="logits"),
            preds="logits",
            target="target",
            by="doc_id",
            progress=False,
        )
        tokens = xs.evaluate(
            tokens_path,
            xs.TokenCrossEntropy(unit="byte", per_document=True),
            preds="lp",
            document="doc_id",
            units="bytes",
            progress=False,
        )
    overall = full.overall
    difference = abs(tokens.loss - overall.loss) / overall.loss
    print(f"held-out characters: {tokens.count} in {tokens.documents} documents")
    print(f"perplexity from full logits:     {overall.perplexity:.6f}")
    print(f"perplexity from token log-probs: {tokens.perplexity:.6f}")
    print(f"same within SPEC section 3 (relative 1e-12): {difference <= 1e-12}")
    per_doc = dict(zip(tokens.per_document["document"], tokens.per_document["loss"], strict=True))
    worst = max(abs(per_doc[key[0]] - r.loss) / r.loss for key, r in full.groups.items())
    print(f"per-document losses agree too (relative 1e-12): {worst <= 1e-12}")
    print(
        f"loss {tokens.loss:.4f} +/- {tokens.stderr:.4f} per token, "
        f"+/- {tokens.clustered_stderr:.4f} clustered by document"
    )
    print(
        f"bits per byte {tokens.bits_per_unit:.4f} +/- {tokens.bits_per_unit_stderr:.4f}; "
        f"mean of per-document perplexities {tokens.document_perplexity:.4f}"
    )
    table = tokens.per_document.select("document", "tokens", "perplexity", "bits_per_unit")
    table = table.rename({"bits_per_unit": "bits_per_byte"})
    with pl.Config(
        tbl_hide_dataframe_shape=True, float_precision=4, tbl_hide_column_data_types=True
    ):
        print(table)


if __name__ == "__main__":
    main()

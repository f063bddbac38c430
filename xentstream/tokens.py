"""Language-model evaluation from token log-probabilities: documents, units, honest errors.

Evaluation harnesses keep, per token, the log-probability the model gave the token that
came (or its negative log-likelihood), not the vocabulary-wide logits. This module
takes such a column as its own loss kind, ``"tokens"`` (:class:`TokenConfig`): a row is
one token, its loss is ``L_i = -x_i`` (``input="logprobs"``, finite and ``<= 0``) or
``L_i = x_i`` (``input="nll"``, finite and ``>= 0``); there is no class axis, no target,
no class weights or smoothing (the multiclass options would all have to be refused),
which is why it is a kind and not an ``input=`` of the multiclass kind. A mask drops
padding rows (``mask == 0``; their values are not looked at, they count as
``ignored``), sample weights ``s_i`` weigh tokens.

Statistics (``R`` is the corpus loss, ``sum s L / sum s``)
----------------------------------------------------------
- ``perplexity = exp(R)``: the corpus perplexity, every token weighing the same (the
  ``exp`` of a training loop's mean token loss).
- ``document_perplexity``: the unweighted mean over documents of ``exp(R_d)``,
  ``R_d = A_d / B_d`` with ``A_d = sum_{i in d} s_i L_i`` and ``B_d = sum_{i in d} s_i``:
  what Hugging Face ``evaluate``'s perplexity reports as ``mean_perplexity``. A short
  document weighs as much as a long one, and by Jensen's inequality it is at least the
  ``exp`` of the documents' mean loss: the two perplexities differ whenever the
  documents do.
- ``stderr``: the per-token standard error (:mod:`xentstream.report`), which treats
  tokens as independent; tokens of one document are correlated, so it is too small.
- ``clustered_stderr``: the cluster-robust (sandwich) standard error of the ratio
  estimator ``R = sum_d A_d / sum_d B_d`` with documents as clusters,
  ``sqrt(G / (G - 1) * sum_d (A_d - R B_d)**2) / sum_d B_d`` over the ``G`` documents of
  positive weight (Cameron and Miller 2015, the CR1 correction). With one token a
  document and unit weights it equals ``stderr``.
- ``bits_per_unit = sum s L / (ln 2 * sum s u)`` for units ``u_i`` per row (bytes,
  characters or words a token covers; a unit count per document can sit on one of its
  rows, the others 0): bits per byte with byte counts. Its delta-method standard error
  is the same ratio formula with ``u`` for ``B``: clustered by document when documents
  are given, else with every row its own cluster (``n / (n - 1)`` over the ``n``
  counted rows), divided by ``ln 2``.

Exactness: every sum is exact (SPEC section 3), per document too; a document's rows
need not be contiguous, nor in one batch, shard or state file (a per-document exact
state keyed by the document id). The clustered sums are taken at ``compute()`` from the
per-document sums, each correctly rounded (``A_d``, ``B_d``, ``U_d``), through the
deterministic residuals ``A_d - R B_d`` whose squares are summed with ``math.fsum``:
the same bits for any split, merge order or thread count. The per-document state costs
three accumulators (1.7 KB) and the id per document, in memory and in state files.

Examples
--------
>>> import numpy as np, xentstream as xs
>>> m = xs.TokenCrossEntropy()
>>> lp = np.log([0.5, 0.25, 0.5, 0.125])
>>> report = m.update(lp, document=[0, 0, 1, 1], units=[1, 2, 1, 1]).compute()
>>> round(report.perplexity, 6), report.documents
(3.363586, 2)
>>> round(report.bits_per_unit, 6)
1.4
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xentstream import accumulator
from xentstream._errors import DEFAULT_NAMES, ColumnNames
from xentstream._kernels import layout
from xentstream._tokens import TokenBatch, token_batch
from xentstream.config import TOKEN_INPUTS, TokenConfig
from xentstream.kinds import KINDS
from xentstream.metrics import Metric

__all__ = ["TOKEN_INPUTS", "TokenConfig", "TokenCrossEntropy", "token_cross_entropy"]


class TokenCrossEntropy(Metric):
    """Streaming language-model evaluation from token log-probabilities (or NLLs).

    Parameters
    ----------
    input : {"logprobs", "nll"}
        What a row holds: the target token's log-probability (``<= 0``) or its negative
        log-likelihood (``>= 0``).
    unit : str, optional
        What ``units`` count (``"byte"``, ``"char"``, ``"word"``), for the labels of
        tables (``bits_per_byte``).
    per_document : bool
        Also report the per-document table (``Report.per_document``).
    validate : bool
        Value checks (the mask check always runs).
    engine : {"auto", "cpu"}
        The kernel runs on the CPU.
    window : int, optional
        Also report the loss over the last ``window`` counted tokens.

    Notes
    -----
    ``update(values, mask=None, sample_weight=None, *, document=None, units=None)``:
    ``mask`` (bool or 0/1, in the target's place) drops padding rows; ``document``
    ids (integers or strings; contiguous or not, across batches too) give the
    per-document statistics and the clustered standard error (once a metric has
    rows, either every batch has them or none); ``units`` per row give bits per unit.
    Formulas: :mod:`xentstream.tokens`.

    Examples
    --------
    >>> import xentstream as xs
    >>> m = xs.TokenCrossEntropy(input="nll", unit="byte")
    >>> r = m.update([0.5, 1.0, 2.0], document=["a", "a", "b"], units=[1, 1, 2]).compute()
    >>> round(r.loss, 6), r.documents, round(r.bits_per_unit, 6)
    (1.166667, 2, 1.262358)
    """

    kind = KINDS["tokens"]

    def __init__(
        self,
        *,
        input: str = "logprobs",
        unit: str | None = None,
        per_document: bool = False,
        validate: bool = True,
        engine: str = "auto",
        window: int | None = None,
    ) -> None:
        config = TokenConfig(input=input, unit=unit, per_document=per_document, validate=validate)
        if engine == "cuda":
            raise ValueError("engine: token values are evaluated on the CPU (engine='cpu')")
        super().__init__(config, engine=engine, window=window)

    def update(
        self,
        preds: Any,
        target: Any = None,
        sample_weight: Any = None,
        *,
        document: Any = None,
        units: Any = None,
        names: ColumnNames = DEFAULT_NAMES,
    ) -> TokenCrossEntropy:
        """Add one batch of token values (``target``: the optional mask). Atomic."""
        self.accumulate(preds, target, sample_weight, names=names, document=document, units=units)
        return self

    def forward(
        self,
        preds: Any,
        target: Any = None,
        sample_weight: Any = None,
        *,
        document: Any = None,
        units: Any = None,
    ) -> float:
        """Add one batch and return its mean loss (as :meth:`Metric.forward`)."""
        batch = self.accumulate(preds, target, sample_weight, document=document, units=units)
        return accumulator.ratio(batch.sums[layout.LOSS], batch.sums[layout.DENOMINATOR])

    __call__ = forward

    def accumulate(
        self, preds: Any, target: Any = None, sample_weight: Any = None, **options: Any
    ) -> TokenBatch:
        """:meth:`Metric.accumulate` with the side columns ``document`` and ``units``
        (``document_name`` / ``units_name``: their column names in messages); the
        keywords are :meth:`run_batch`'s (``names``, ``groups``, ``n_groups``,
        ``row_offset``, the side columns)."""
        with self._lock:
            batch = self.run_batch(
                preds, target, sample_weight, keep_rows=self._window is not None, **options
            )
            if batch.n_rows:
                self._absorb(batch, target, sample_weight)
        return batch

    def run_batch(
        self,
        preds: Any,
        target: Any = None,
        sample_weight: Any = None,
        *,
        names: ColumnNames = DEFAULT_NAMES,
        groups: np.ndarray | None = None,
        n_groups: int = 1,
        row_offset: int | None = None,
        keep_rows: bool = False,
        document: Any = None,
        units: Any = None,
        document_name: str = "document",
        units_name: str = "units",
    ) -> TokenBatch:
        """:meth:`Metric.run_batch` with the side columns (as :meth:`accumulate`): one
        validated pass, nothing absorbed; also refuses a batch with document ids after
        rows without (or the other way round), so that a paired comparison of two
        token metrics checks it before either absorbs."""
        offset = self.rows_seen if row_offset is None else row_offset
        batch = token_batch(
            self.config,
            preds,
            target,
            sample_weight,
            document=document,
            units=units,
            groups=groups,
            n_groups=n_groups,
            keep_rows=keep_rows,
            keep_terms=self._window is not None,
            row_offset=offset,
            names=names,
            engine=self.engine,
            document_name=document_name,
            units_name=units_name,
        )
        with_documents = batch.doc_keys is not None
        if batch.n_rows and self.rows_seen and with_documents != (self.state.documents is not None):
            raise ValueError(
                f"{document_name}: "
                + (
                    "this batch has document ids but the rows before it had none"
                    if with_documents
                    else "the rows before had document ids; every batch needs them"
                )
            )
        return batch

    def _absorb(self, batch: Any, target: Any, sample_weight: Any) -> None:
        # A token batch adds its unit and per-document sums too (TokenState.add_batch);
        # also what a paired comparison's ``absorb`` of a run_batch result reaches.
        self.state.add_batch(batch)
        if self._window is not None and batch.window is not None:
            self._window.extend(*batch.window)


def token_cross_entropy(
    preds: Any,
    mask: Any = None,
    *,
    input: str = "logprobs",
    sample_weight: Any = None,
    validate: bool = True,
    reduction: str = "mean",
) -> float:
    """Mean (or sum) loss of token values: ``-x`` for log-probabilities, ``x`` for NLLs.

    ``mask`` (bool or 0/1) drops padding rows. ``reduction="mean"``: ``sum s L / sum s``
    (exact, correctly rounded); ``"sum"``: ``sum s L``.

    Examples
    --------
    >>> import math, xentstream as xs
    >>> xs.token_cross_entropy([math.log(0.5), math.log(0.25)]) == math.log(8) / 2
    True
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: must be 'mean' or 'sum', got {reduction!r}")
    config = TokenConfig(input=input, validate=validate)
    batch = token_batch(config, preds, mask, sample_weight, names=ColumnNames(target="mask"))
    if reduction == "sum":
        return accumulator.to_float(batch.sums[layout.LOSS])
    return accumulator.ratio(batch.sums[layout.LOSS], batch.sums[layout.DENOMINATOR])

"""The loss kinds, declared once as data: what each kind is, and every layer's part in it.

A :class:`Kind` says what is computed (its config class), how a batch is prepared
and sent to its kernel (its batch function), what its class dimension is called,
which config fields carry the class count, the per-class switch and the weights
that scale the loss, and which report quantities it has. The metrics, the report,
the command line, evaluation and Dask read this table instead of branching on a
kind's name, so a new kind is one entry here (plus its config, batch function,
kernel, metric class and function: ``docs/architecture.md`` lists the files of a
worked example).

Examples
--------
>>> from xentstream.kinds import KINDS
>>> [kind.name for kind in KINDS.values()]
['multiclass', 'binary', 'multilabel', 'tokens']
>>> KINDS["multilabel"].class_axis, KINDS["multilabel"].per_class_field
('label', 'per_label')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from xentstream import report
from xentstream._batch import BatchSums, binary_batch, multiclass_batch, multilabel_batch
from xentstream._inputs import as_array
from xentstream._tokens import (
    TokenState,
    token_batch,
    token_paired_fields,
    token_report_fields,
    token_row_denominators,
)
from xentstream.accumulator import ExactState
from xentstream.config import (
    BinaryConfig,
    LossConfig,
    MulticlassConfig,
    MultilabelConfig,
    TokenConfig,
)

__all__ = ["KINDS", "TARGET_SHAPES", "Kind", "kind_of"]

#: Values of :attr:`Kind.target_shape`.
TARGET_SHAPES = ("scalar", "labels", "preds")


@dataclass(frozen=True)
class Kind:
    """One loss kind, as every layer needs to know it.

    Attributes
    ----------
    name : str
        The kind's name: ``config.kind``, the command line's ``--task``.
    config : type
        Its :class:`~xentstream.config.LossConfig` subclass.
    batch : callable
        ``batch(config, preds, target, sample_weight, **options) -> BatchSums``:
        checks and prepares one batch and runs its kernel (:mod:`xentstream._batch`).
    class_axis : str or None
        What the class dimension is called ("class", "label"); None without one.
    count_field : str or None
        Config field holding the class (label) count, inferred from data when None.
    per_class_field : str or None
        Config flag that keeps per-class (per-label) sums.
    loss_weights_field : str or None
        Config field whose weights scale the loss terms (the KL divergence and the
        normalized entropy are undefined while it is set, as they are while any
        config field declared with ``metadata={"scales_loss": True}`` is set).
    class_weights_denominator : bool
        Whether a row's denominator ``d_i`` is its label's class weight (else 1).
    one_class_per_row : bool
        Whether each counted row falls in exactly one class of ``class_counts``
        (hard labels) rather than counting the positives of each label.
    counts_labels : bool
        Keeps exact hard-label counts (the normalized entropy's baseline without
        per-class sums).
    has_perplexity, has_accuracy : bool
        Which of those report fields the kind defines.
    label_entropy : callable
        ``label_entropy(sums, class_sums, label_counts) -> float | None``: entropy of
        the empirical label distribution (the normalized entropy's denominator).
    per_class_frame : callable
        ``per_class_frame(class_sums, class_counts, weight) -> polars.DataFrame``.
    label_counts : callable or None
        ``label_counts(config, target, sample_weight, n_classes)``: exact counts of a
        batch's hard labels (None where they are unknown); with ``codes`` and
        ``n_groups`` keywords, per group, shape ``(n_groups, n_classes)``.
    row_denominators : callable or None
        ``row_denominators(config, target, n_rows, n_classes)``: each row's ``d_i``
        (-1 for ignored rows), where the kernel wrote no per-row terms: a paired
        comparison, and a window on the CUDA engine (on the CPU the window reads the
        kernel's terms, ``BatchSums.kept_terms``); None: every ``d_i`` is 1.
    state : type
        Its :class:`~xentstream.accumulator.ExactState` class (a subclass for kinds
        that keep more exact state, with their own state-file ``SECTIONS``).
    extra_report : callable or None
        ``extra_report(config, state) -> dict``: :class:`~xentstream.Report` fields the
        kind sets beyond the common ones (the token kind's documents and units).
    paired_report : callable or None
        ``paired_report(model_state, baseline_state, difference) -> dict``:
        :class:`~xentstream.ComparisonReport` fields the kind sets beyond the common
        ones (the token kind's difference clustered by document).
    side_columns : tuple of str
        Per-row columns besides preds / target / sample_weight that the kind's metric
        takes (``evaluate(document=..., units=...)``).
    target_optional : bool
        Whether a source may leave the target out (the token kind's target is a mask).
    pairable : bool
        Whether :class:`~xentstream.Comparison` can pair two of its metrics (it needs
        the kind's per-row losses and denominators from ``batch``).
    task : str
        The command line's ``--task`` name of the kind.
    breakdown_field : str or None
        Config flag that the command line's ``--per-class`` sets: the per-class
        (per-label) sums, or another per-item table (the token kind's documents);
        None: the flag changes nothing for this kind.
    target_shape : str or None
        How ``--task auto`` recognizes the kind from the shapes of a row's values:
        ``"scalar"`` (one prediction and one target a row), ``"labels"`` (the
        predictions' shape less their class axis), ``"preds"`` (the predictions'
        shape); None: never inferred from shapes.
    kernel_forecasts : bool
        Whether ``batch`` takes ``keep_forecasts=True`` and its kernel then writes each
        row's reliability-bin forecast (``BatchSums.row_forecasts``, where it can), so
        that ``calibration_bins`` tally them instead of reading the predictions again.
    kernel_bins : bool
        Whether ``batch`` takes ``calibration_bins=n`` and its kernel then bins the
        rows itself, block by block right after its loss pass
        (``BatchSums.bin_blocks``, on the CPU): no forecasts written out, no second
        launch.
    cli_inputs : dict
        ``--input`` values that belong to this kind alone, each to its config's
        ``input=`` (the token kind's ``target-nll`` -> ``"nll"``); a source's values
        in one of them select the kind. Empty: the common ``probs`` / ``logprobs`` /
        ``logits``.
    """

    name: str
    config: type[LossConfig]
    batch: Callable[..., BatchSums]
    class_axis: str | None
    count_field: str | None
    per_class_field: str | None
    loss_weights_field: str | None
    class_weights_denominator: bool
    one_class_per_row: bool
    counts_labels: bool
    has_perplexity: bool
    has_accuracy: bool
    label_entropy: Callable[..., float | None]
    per_class_frame: Callable[..., Any]
    label_counts: Callable[..., np.ndarray | None] | None = None
    row_denominators: Callable[..., np.ndarray] | None = None
    state: type[ExactState] = ExactState
    extra_report: Callable[..., dict[str, Any]] | None = None
    paired_report: Callable[..., dict[str, Any]] | None = None
    side_columns: tuple[str, ...] = ()
    target_optional: bool = False
    pairable: bool = True
    task: str = ""
    breakdown_field: str | None = None
    target_shape: str | None = None
    kernel_forecasts: bool = False
    kernel_bins: bool = False
    cli_inputs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.task:
            object.__setattr__(self, "task", self.name)
        if self.target_shape not in (None, *TARGET_SHAPES):
            raise ValueError(f"target_shape: one of {TARGET_SHAPES} or None")

    def per_class(self, config: LossConfig) -> bool:
        """Whether ``config`` keeps per-class sums."""
        return bool(self.per_class_field and getattr(config, self.per_class_field))

    def class_count(self, config: LossConfig) -> int | None:
        """The class count ``config`` fixes (None: inferred from the first batch)."""
        return getattr(config, self.count_field) if self.count_field else None

    def loss_weighted(self, config: LossConfig) -> bool:
        """Whether options in ``config`` scale the loss terms: its class / positive
        weights, or any set config field declared with ``metadata={"scales_loss":
        True}`` (so that an option of that sort needs no change here)."""
        if self.loss_weights_field and getattr(config, self.loss_weights_field) is not None:
            return True
        return any(
            option.metadata.get("scales_loss") and getattr(config, option.name) is not None
            for option in fields(config)
        )

    def unit_denominators(self, config: LossConfig) -> bool:
        """Whether every row's denominator ``d_i`` is 1."""
        return not (self.class_weights_denominator and self.loss_weighted(config))

    def make_config(self, **options: Any) -> LossConfig:
        """The kind's config of ``options`` (its fields): how a function or a metric
        passes on options it has no parameter of its own for (an option added to the
        config works everywhere at once).

        Raises
        ------
        TypeError
            For a name that is no option of the kind, naming it and the options.

        Examples
        --------
        >>> KINDS["binary"].make_config(pos_weight=2.0).pos_weight
        2.0
        >>> KINDS["binary"].make_config(pos_wieght=2.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: pos_wieght: not an option of the binary loss (its options: ..., pos_weight, ...)
        """
        names = {option.name for option in fields(self.config)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(
                f"{unknown[0]}: not an option of the {self.name} loss "
                f"(its options: {', '.join(sorted(names))})"
            )
        return self.config(**options)

    def complete(self, config: LossConfig) -> LossConfig:
        """``config`` with the class count its per-class weights fix, where it has none
        (what the metrics' constructors build)."""
        weights = getattr(config, self.loss_weights_field) if self.loss_weights_field else None
        if self.count_field and getattr(config, self.count_field) is None:
            if isinstance(weights, tuple):
                return replace(config, **{self.count_field: len(weights)})
        return config


def hard_labels(target: Any, sample_weight: Any) -> np.ndarray | None:
    """A batch's hard labels, flat; None for soft targets or weighted rows (whose label
    mass needs per-class exact sums)."""
    if sample_weight is not None:
        return None
    labels = as_array(target, "target")
    return labels.reshape(-1) if labels.dtype.kind in "iub" else None


def _count_hard_labels(
    config: MulticlassConfig,
    target: Any,
    sample_weight: Any,
    n_classes: int,
    *,
    codes: np.ndarray | None = None,
    n_groups: int = 1,
) -> np.ndarray | None:
    labels = hard_labels(target, sample_weight)
    if labels is None:
        return None
    flat = labels.astype(np.int64, copy=False)
    if codes is not None:
        codes = np.asarray(codes).reshape(-1)
        if labels.size != codes.size:  # token labels: one group per row, T labels per row
            codes = np.repeat(codes, labels.size // max(codes.size, 1))
    if config.ignore_index is not None:
        kept = labels != config.ignore_index
        flat = flat[kept]
        codes = None if codes is None else codes[kept]
    if codes is None:
        return np.bincount(flat, minlength=n_classes)
    grouped = codes.astype(np.int64) * n_classes + flat
    return np.bincount(grouped, minlength=n_groups * n_classes).reshape(n_groups, n_classes)


def _class_weight_denominators(
    config: MulticlassConfig, target: Any, n_rows: int, n_classes: int
) -> np.ndarray:
    labels = as_array(target, "target")
    if labels.size != n_rows or labels.dtype.kind not in "iub":  # soft targets: d_i = 1
        return np.ones(n_rows)
    labels = labels.reshape(-1).astype(np.int64)
    ignored = (
        labels == config.ignore_index
        if config.ignore_index is not None
        else np.zeros(labels.shape, bool)
    )
    weights = np.ones(n_classes) if config.class_weight is None else np.asarray(config.class_weight)
    return np.where(ignored, -1.0, weights[np.where(ignored, 0, labels)])


#: Every kind, by name, in the order the documentation lists them.
KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            name="multiclass",
            config=MulticlassConfig,
            batch=multiclass_batch,
            kernel_forecasts=True,
            class_axis="class",
            count_field="num_classes",
            per_class_field="per_class",
            loss_weights_field="class_weight",
            class_weights_denominator=True,
            one_class_per_row=True,
            counts_labels=True,
            # exp(loss) is a perplexity over the classes of one distribution per row.
            has_perplexity=True,
            has_accuracy=True,
            label_entropy=report.categorical_label_entropy,
            per_class_frame=report.class_frame,
            label_counts=_count_hard_labels,
            row_denominators=_class_weight_denominators,
            breakdown_field="per_class",
            target_shape="labels",  # a label per row, or per token of (T, V) logits
        ),
        Kind(
            name="binary",
            config=BinaryConfig,
            batch=binary_batch,
            kernel_bins=True,
            class_axis=None,
            count_field=None,
            per_class_field=None,
            loss_weights_field="pos_weight",
            class_weights_denominator=False,
            one_class_per_row=False,
            counts_labels=False,
            # One Bernoulli per row: its exp(loss) is no perplexity over classes.
            has_perplexity=False,
            has_accuracy=True,
            label_entropy=report.bernoulli_label_entropy,
            per_class_frame=report.label_frame,
            target_shape="scalar",
        ),
        Kind(
            name="multilabel",
            config=MultilabelConfig,
            batch=multilabel_batch,
            class_axis="label",
            count_field="num_labels",
            per_class_field="per_label",
            loss_weights_field="pos_weight",
            class_weights_denominator=False,
            one_class_per_row=False,
            counts_labels=False,
            # A sum of binary losses over labels: neither a perplexity nor one top-1.
            has_perplexity=False,
            has_accuracy=False,
            label_entropy=report.per_label_entropy,
            per_class_frame=report.label_frame,
            breakdown_field="per_label",
            target_shape="preds",
        ),
        Kind(
            name="tokens",
            config=TokenConfig,
            batch=token_batch,
            class_axis=None,
            count_field=None,
            per_class_field=None,
            loss_weights_field=None,
            class_weights_denominator=False,
            one_class_per_row=False,
            counts_labels=False,
            # The log-loss of the token that came under a distribution over the
            # vocabulary: exp(loss) is the corpus perplexity.
            has_perplexity=True,
            has_accuracy=False,
            label_entropy=lambda sums, class_sums, label_counts: None,
            per_class_frame=report.label_frame,
            state=TokenState,
            extra_report=token_report_fields,
            paired_report=token_paired_fields,
            side_columns=("document", "units"),
            target_optional=True,
            breakdown_field="per_document",
            cli_inputs={"target-logprob": "logprobs", "target-nll": "nll"},
            row_denominators=token_row_denominators,
        ),
    )
}


def kind_of(config: LossConfig) -> Kind:
    """The :class:`Kind` of a config."""
    return KINDS[config.kind]

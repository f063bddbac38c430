"""PyTorch integration: a torchmetrics-style wrapper with exact distributed sync.

:class:`TorchMetric` wraps any xentstream metric with the interface training loops and
Lightning expect (``update``, ``forward`` / call returning the batch loss as a tensor,
``compute`` returning a tensor, ``reset``, ``to``), and :func:`sync` all-gathers the
exact states of every rank of a ``torch.distributed`` process group and merges them.
The states are exact integer sums, so the synced result is **bitwise equal** to one
process over all the rows, whatever the number of ranks, the split of the rows between
them or the order they arrive in (torchmetrics' float all-reduce cannot promise that).

torch is imported when this module is: ``import xentstream.torch`` needs it installed.

Examples
--------
>>> import torch, xentstream as xs
>>> from xentstream.torch import TorchMetric
>>> metric = TorchMetric(xs.CrossEntropy(input="logits"))
>>> batch_loss = metric(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
>>> round(batch_loss.item(), 6)
0.126928
>>> metric.compute().dtype
torch.float64
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from xentstream.metrics import Metric
from xentstream.report import Report

__all__ = ["TorchMetric", "sync"]


def _distributed(group: Any) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def sync(metric: Metric, group: Any = None) -> Metric:
    """The merge of ``metric``'s state on every rank of ``group`` (a new metric).

    Every rank must call it (it is a collective: ``all_gather_object`` of the JSON
    states, a few kilobytes each). Without an initialized process group, a copy of
    ``metric``.

    Parameters
    ----------
    metric : Metric
        This rank's metric; left unchanged.
    group : torch.distributed.ProcessGroup, optional
        Default: the world.

    Returns
    -------
    Metric
        Holding every rank's rows; bitwise equal to one metric fed all of them.

    Raises
    ------
    ValueError
        If the ranks' metrics have different configurations.

    Examples
    --------
    >>> import xentstream as xs
    >>> sync(xs.CrossEntropy().update([[0.5, 0.5]], [0])).compute().count
    1
    """
    state = metric.state_dict()
    if not _distributed(group):
        return Metric.from_state_dict(state, engine=metric.engine)
    states: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, state, group=group)
    merged = Metric.from_state_dict(states[0], engine=metric.engine)
    for other in states[1:]:
        merged.merge(Metric.from_state_dict(other, engine=metric.engine))
    return merged


class TorchMetric:
    """A torchmetrics-style wrapper of an xentstream metric.

    Parameters
    ----------
    metric : Metric
        ``xs.CrossEntropy(...)``, ``xs.BinaryCrossEntropy(...)``, ... (updated in place).
    sync_on_compute : bool
        :meth:`compute` / :meth:`report` merge every rank's state first (:func:`sync`)
        when a process group is initialized.
    process_group : torch.distributed.ProcessGroup, optional
        The group to sync over (default: the world).

    Examples
    --------
    In a Lightning module: ``self.val_loss = TorchMetric(xs.CrossEntropy(input="logits"))``,
    ``self.val_loss.update(logits, y)`` in ``validation_step``, then
    ``self.log_dict(self.val_loss.report().scalars("val/"))`` and
    ``self.val_loss.reset()`` at the end of the epoch.

    >>> import torch, xentstream as xs
    >>> metric = TorchMetric(xs.BinaryCrossEntropy(input="logits"))
    >>> metric.update(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))
    >>> round(metric.compute().item(), 6)
    0.693147
    """

    def __init__(
        self, metric: Metric, *, sync_on_compute: bool = True, process_group: Any = None
    ) -> None:
        if not isinstance(metric, Metric):
            raise TypeError(f"metric: expected an xentstream metric, got {type(metric).__name__}")
        self.metric = metric
        self.sync_on_compute = sync_on_compute
        self.process_group = process_group
        self.device = torch.device("cpu")

    def update(self, preds: Any, target: Any, sample_weight: Any = None) -> None:
        """Add one batch (tensors are read without copies on the CPU, on the GPU with
        ``engine="auto"`` or ``"cuda"``); never synced."""
        self.metric.update(preds, target, sample_weight)

    def forward(self, preds: Any, target: Any, sample_weight: Any = None) -> torch.Tensor:
        """Add one batch and return its mean loss (float64, on :attr:`device`)."""
        value = self.metric.forward(preds, target, sample_weight)
        return torch.tensor(value, dtype=torch.float64, device=self.device)

    __call__ = forward

    def report(self) -> Report:
        """The :class:`~xentstream.Report`, over every rank when ``sync_on_compute``."""
        if self.sync_on_compute and _distributed(self.process_group):
            return sync(self.metric, self.process_group).compute()
        return self.metric.compute()

    def compute(self) -> torch.Tensor:
        """The mean loss (over every rank when ``sync_on_compute``) as a float64 tensor."""
        return torch.tensor(self.report().loss, dtype=torch.float64, device=self.device)

    def reset(self) -> TorchMetric:
        """Forget every row (this rank's)."""
        self.metric.reset()
        return self

    def to(self, device: Any) -> TorchMetric:
        """Return results on ``device`` and run the kernels there (see :meth:`Metric.to`)."""
        self.device = torch.device(device)
        self.metric.to(self.device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """This rank's exact state (JSON-able; see :meth:`Metric.state_dict`)."""
        return self.metric.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the state by one saved with :meth:`state_dict` (same configuration)."""
        self.metric.load_state_dict(state)

    def __repr__(self) -> str:
        return f"TorchMetric({self.metric!r})"

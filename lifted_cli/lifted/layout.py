"""How a lifted problem is laid out for execution: which layers it owns, how they are grouped into
stacks, and the communication its sums over samples and its layer boundaries use.

The mathematics receives a :class:`Layout` at construction and never asks whether it is
distributed. One process gets the default: every layer, the :class:`Local` communicator whose
collectives are identities. ``lifted_cli.parallel.parallelize`` makes the layout of one rank of a
torch.distributed run: its range of layers (layer-parallel) and a communicator that combines the sums
over the samples of the ranks sharing out a batch (data-parallel) and exchanges the states at the
boundaries of its layers with the neighbouring ranks. The same interface, implemented twice:

* ``mean_(tensors)``: local means over this process's samples -> means over the global batch, in place;
* ``all_rows(tensors, dim)``: the rows (samples along ``dim``) of every process, in the batch's order;
* ``exchange(sends, recvs)``: point-to-point with the neighbouring layer ranges, each item a
  ``(tensor, "below" | "above")`` pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Local:
    """The communication of a single process: every collective is the identity; a single process
    owns every layer, so it never has a neighbour to exchange with."""

    def mean_(self, tensors: list) -> list:
        return tensors

    def all_rows(self, tensors: list, dim: int = 0) -> list:
        return tensors

    def exchange(self, sends: list, recvs: list) -> None:
        if sends or recvs:
            raise RuntimeError("a single process has no neighbouring layers to exchange with")


LOCAL = Local()


@dataclass(frozen=True)
class Layout:
    """``layers``: the range (first, last), 1-based, this process works on (None: all); ``grouped``:
    runs of equal consecutive blocks become stacks (else every block is a stack of one); ``comm``: the
    communicator (``Local`` or ``lifted_cli.parallel.Comm``)."""

    comm: Any = LOCAL
    layers: tuple | None = None
    grouped: bool = False

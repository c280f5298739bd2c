"""Layer-parallel lifted training: the layers of one process (docs/parallel.md).

A rank owns the blocks ``first..last`` with their auxiliary variables. The Jacobi X-step of every
variable depends on its own layer, the layer below (the state u_{first-1}) and the layer above (the
gradient in u_last of block last+1's terms, its *back-projection*, and ||W_{last+1}||^2 for the
step size). So before a sweep each rank sends the back-projection of its first block down, and
after it sends its top state up; nothing else crosses ranks, and the iterates are those of the
single-process Jacobi sweep. The W-steps are local. The forward warm start is a pipeline (each rank
waits for the state below).
"""

from __future__ import annotations

import torch


class LayerPart:
    """This rank's layers of a lifted problem and the exchanges with its neighbours."""

    def __init__(self, comm, problem, first: int, last: int):
        self.comm = comm
        self.problem = problem
        self.first, self.last = first, last
        # the neighbours in this rank's row of the grid (the same samples, the adjacent layer ranges)
        self.below = comm.rank - 1 if comm.layer_rank > 0 else None
        self.above = comm.rank + 1 if comm.layer_rank < comm.layer_world - 1 else None
        self.back: torch.Tensor | None = None  # gradient in u_last of the terms of block last+1
        self.next_norm_sq: float | None = None  # ||W_{last+1}||^2

    def owns(self, l: int) -> bool:
        return self.first <= l <= self.last

    def exchange_down(self, st, norm_sq) -> None:
        """Before a sweep: send the back-projection of the first block (and its ||W||^2) to the rank
        below; receive the one from above."""
        p = self.problem
        sends, recvs = [], []
        if self.below is not None:
            g = p.downstream_gradient(st, self.first - 1).contiguous()
            norm = g.new_tensor([norm_sq("pre", self.first)])
            sends += [(g, self.below), (norm, self.below)]
        if self.above is not None:
            ref = st.u[self.last]
            self.back = ref.new_empty(ref.shape)
            norm_in = ref.new_empty(1)
            recvs += [(self.back, self.above), (norm_in, self.above)]
        self.comm.exchange(sends, recvs)
        if self.above is not None:
            self.next_norm_sq = float(norm_in)

    def exchange_up(self, st) -> None:
        """After a sweep (and at a warm start): send the top state up; receive u_{first-1}."""
        sends, recvs = [], []
        if self.above is not None:
            sends.append((st.u[self.last].contiguous(), self.above))
        if self.below is not None:
            ghost = st.y.new_empty(st.y.shape[0], self.problem.blocks[self.first - 1].in_dim)
            recvs.append((ghost, self.below))
        self.comm.exchange(sends, recvs)
        if self.below is not None:
            st.u[self.first - 1] = ghost

    def receive_input(self, y: torch.Tensor) -> torch.Tensor:
        """The forward pipeline: the state below this rank's first block."""
        ghost = y.new_empty(y.shape[0], self.problem.blocks[self.first - 1].in_dim)
        self.comm.exchange([], [(ghost, self.below)])
        return ghost

    def send_output(self, u: torch.Tensor) -> None:
        if self.above is not None:
            self.comm.exchange([(u.contiguous(), self.above)], [])

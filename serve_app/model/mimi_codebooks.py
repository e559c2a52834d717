"""Mimi's quantizer decode (codes to the decoder's input) as one gather and one sum.

transformers decodes each codebook on its own (an embedding lookup and an add per codebook, then
one output projection per quantizer group): about 70 kernels for CSM's 32 codebooks, which is a
fixed cost of every streaming decode launch however few frames it decodes. The output projections
are linear and bias-free, so projecting each codebook's table once up front gives the same sum:
decoding is then one lookup into the stacked projected tables and one sum over the codebooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.mimi.modeling_mimi import MimiSplitResidualVectorQuantizer


class ProjectedCodebooks:
    """The codebooks of a `MimiSplitResidualVectorQuantizer`, each projected by its group's output
    projection and stacked: (num codebooks, codebook size, hidden) in the quantizer's dtype."""

    @torch.no_grad()
    def __init__(self, quantizer: MimiSplitResidualVectorQuantizer) -> None:
        dtype = next(quantizer.parameters()).dtype
        exact = torch.promote_types(dtype, torch.float32)  # bf16 weights are projected in float32
        tables = []
        for group in (quantizer.semantic_residual_vector_quantizer, quantizer.acoustic_residual_vector_quantizer):
            proj = group.output_proj
            if proj is not None and (proj.bias is not None or proj.kernel_size != (1,)):
                raise ValueError("folding needs bias-free 1x1 output projections")
            for layer in group.layers:
                embed = layer.codebook.embed.to(exact)  # (codebook size, codebook dim)
                tables.append(embed @ proj.weight[:, :, 0].to(exact).T if proj is not None else embed)
        self.table = torch.stack(tables).to(dtype)
        self.num_codebooks, self.codebook_size, self.hidden = self.table.shape
        self.offsets = torch.arange(self.num_codebooks, device=self.table.device) * self.codebook_size

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, K, T) codes of the first K codebooks → (B, hidden, T), as `quantizer.decode(codes)`."""
        k = codes.shape[1]
        if not 1 <= k <= self.num_codebooks:
            raise ValueError(f"codes must hold 1..{self.num_codebooks} codebooks, got {k}")
        rows = codes + self.offsets[:k, None]
        return F.embedding(rows, self.table.view(-1, self.hidden)).sum(1).transpose(1, 2)

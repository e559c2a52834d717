"""The quantizer decode as one gather over projected codebooks equals transformers' per-codebook decode."""

from __future__ import annotations

import pytest
import torch
from transformers import MimiConfig

from serve_app.model.mimi_codebooks import ProjectedCodebooks
from tests.support_mimi_stream import random_codes, random_mimi, tiny_mimi_config


@pytest.mark.parametrize("config", [tiny_mimi_config(), MimiConfig()], ids=["tiny", "full"])
def test_projected_codebooks_decode_as_the_quantizer(config: MimiConfig) -> None:
    mimi = random_mimi(config, seed=3)
    codebooks = ProjectedCodebooks(mimi.quantizer)
    codes = random_codes(3, 5, config, seed=4)
    for k in sorted({1, 2, config.num_quantizers}):  # semantic only, one acoustic, all
        with torch.no_grad():
            expected = mimi.quantizer.decode(codes[:, :k])
        got = codebooks.decode(codes[:, :k])
        assert got.shape == expected.shape and expected.abs().max() > 0.1
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_projected_codebooks_refuse_more_codebooks_than_they_hold() -> None:
    config = tiny_mimi_config()
    codebooks = ProjectedCodebooks(random_mimi(config).quantizer)
    with pytest.raises(ValueError, match="codebooks"):
        codebooks.decode(random_codes(1, 2, config)[:, :0])
    too_many = torch.zeros(1, config.num_quantizers + 1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="codebooks"):
        codebooks.decode(too_many)


def test_projected_codebooks_hold_no_autograd_graph() -> None:
    codebooks = ProjectedCodebooks(random_mimi(tiny_mimi_config()).quantizer)
    assert not codebooks.table.requires_grad and codebooks.table.grad_fn is None

"""SQI: the attention processor against attention computed by hand, and its place in the U-Net."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from sd_fsmis.core.model.support_query_interaction import (
    SupportBank,
    SupportQueryAttnProcessor,
    install_support_query_interaction,
    self_attention_layers,
)


def _attention(dim: int = 32, heads: int = 4) -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
    return attn.eval()


def _by_hand(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with q from ``x [N, C]`` and k, v from ``context [M, C]``, then to_out."""
    heads = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    d = q.shape[-1] // heads
    q = q.view(-1, heads, d).transpose(0, 1)  # [h, N, d]
    k = k.view(-1, heads, d).transpose(0, 1)  # [h, M, d]
    v = v.view(-1, heads, d).transpose(0, 1)
    weights = torch.softmax(q @ k.transpose(1, 2) / d**0.5, dim=-1)  # [h, N, M]
    out = (weights @ v).transpose(0, 1).reshape(x.shape[0], heads * d)
    return attn.to_out[1](attn.to_out[0](out))


def test_no_bank_equals_stock_processor():
    attn = _attention()
    x = torch.randn(3, 10, 32)
    attn.set_processor(AttnProcessor2_0())
    expected = attn(x)
    attn.set_processor(SupportQueryAttnProcessor(SupportBank(), "layer"))
    torch.testing.assert_close(attn(x), expected, rtol=0, atol=0)


def test_query_mode_equals_attention_over_own_and_all_support_tokens():
    attn = _attention()
    bank = SupportBank()
    attn.set_processor(SupportQueryAttnProcessor(bank, "layer"))
    support = torch.randn(2, 10, 32)  # K = 2 support slices of N = 10 tokens
    query = torch.randn(3, 10, 32)  # B = 3 query slices
    with torch.no_grad():
        with bank.use("record"):
            recorded = attn(support)
        # the support pass itself is plain self-attention
        torch.testing.assert_close(recorded[1], _by_hand(attn, support[1], support[1]), rtol=1e-5, atol=1e-6)
        assert bank.tokens("layer") == 2 * 10
        with bank.use("query"):
            out = attn(query)
        for b in range(3):
            context = torch.cat([query[b], support[0], support[1]], dim=0)  # [own; support 1; support 2]
            torch.testing.assert_close(out[b], _by_hand(attn, query[b], context), rtol=1e-5, atol=1e-6)
    assert bank.mode == "off"


def test_bank_is_stored_once_and_chunking_does_not_change_the_result():
    attn = _attention()
    bank = SupportBank()
    processor = SupportQueryAttnProcessor(bank, "layer")
    attn.set_processor(processor)
    support, query = torch.randn(3, 16, 32), torch.randn(5, 16, 32)
    with torch.no_grad():
        with bank.use("record"):
            attn(support)
        key, value = bank.get("layer")
        assert key.shape == (1, 4, 3 * 16, 8) and value.shape == key.shape  # one sequence, not per slice
        with bank.use("query"):
            whole = attn(query)
            processor.max_chunk_bytes = 1  # one slice at a time
            chunked = attn(query)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert bank.nbytes == 2 * 3 * 16 * 32 * 4


def test_query_without_recorded_support_is_an_error():
    attn = _attention()
    bank = SupportBank()
    attn.set_processor(SupportQueryAttnProcessor(bank, "layer"))
    with bank.use("query"), pytest.raises(RuntimeError, match="no support keys"):
        attn(torch.randn(1, 4, 32))


def test_episode_clears_the_bank_also_on_error():
    attn = _attention()
    bank = SupportBank()
    attn.set_processor(SupportQueryAttnProcessor(bank, "layer"))
    with pytest.raises(ValueError, match="boom"), bank.episode():
        with bank.use("record"):
            attn(torch.randn(1, 4, 32))
        assert len(bank) == 1
        raise ValueError("boom")
    assert bank.is_empty and bank.mode == "off"


def test_installed_on_every_self_attention_only(tiny_pipeline):
    unet = tiny_pipeline.unet
    processors = unet.attn_processors
    attn1 = [n for n in processors if n.endswith("attn1.processor")]
    attn2 = [n for n in processors if n.endswith("attn2.processor")]
    assert attn1 and len(attn1) == len(attn2) == len(self_attention_layers(unet))
    assert all(isinstance(processors[n], SupportQueryAttnProcessor) for n in attn1)
    assert not any(isinstance(processors[n], SupportQueryAttnProcessor) for n in attn2)
    # every SQI processor shares the pipeline's one bank
    assert {id(processors[n].bank) for n in attn1} == {id(tiny_pipeline.bank)}
    # installing again replaces, it does not stack
    install_support_query_interaction(unet, tiny_pipeline.bank)
    assert len(unet.attn_processors) == len(processors)


def test_snapshot_and_replay_for_recomputation():
    attn = _attention()
    bank = SupportBank()
    attn.set_processor(SupportQueryAttnProcessor(bank, "layer"))
    query = torch.randn(2, 4, 32)
    with torch.no_grad(), bank.episode():
        with bank.use("record"):
            attn(torch.randn(1, 4, 32))
        with bank.use("query"):
            expected = attn(query)
            state = bank.snapshot()
        assert bank.mode == "off"
        with bank.replay(state):  # as gradient checkpointing's recomputation would run
            torch.testing.assert_close(attn(query), expected)
        assert bank.mode == "off" and len(bank) == 1

"""One episode of the tiny pipeline: batching, K shots, the bank's life cycle, the input convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_fsmis.core.model.support_query_interaction import self_attention_layers


def _reference_way(pipeline, images, masks, query):
    """The reference's way: a full episode (support encode, VTCT, support pass) for every query slice."""
    return np.concatenate(
        [pipeline.segment_slices(images, masks, query[i : i + 1]) for i in range(len(query))]
    )


def test_a_batch_equals_one_slice_at_a_time(tiny_pipeline, phantom):
    volume, mask = phantom
    batched = tiny_pipeline.segment_slices([volume[2]], [mask], volume)  # all 6 slices in one batch
    single = _reference_way(tiny_pipeline, [volume[2]], [mask], volume)
    assert batched.shape == volume.shape and batched.dtype == np.float32
    assert batched.min() >= 0.0 and batched.max() <= 1.0
    np.testing.assert_allclose(batched, single, rtol=0, atol=2e-5)


def test_k_shots_all_reach_the_query(tiny_pipeline, phantom):
    volume, mask = phantom
    images = [volume[1], volume[2], volume[3]]
    masks = [volume[1] > 0.5, mask, volume[3] > 0.5]
    with torch.inference_mode(), tiny_pipeline.episode(images, masks) as episode:
        bank = tiny_pipeline.bank
        assert episode.context.shots == 3
        assert sorted(bank.layers) == sorted(self_attention_layers(tiny_pipeline.unet))
        # each layer holds K * N tokens: N = tokens of that layer for one slice (64 at 8x8 latents)
        tokens = {layer: bank.tokens(layer) for layer in bank.layers}
        assert set(tokens.values()) <= {3 * 64, 3 * 16, 3 * 4}
        assert 3 * 64 in tokens.values()
        three_shot = episode.predict(volume[4:6]).cpu().numpy()
    assert tiny_pipeline.bank.is_empty
    # changing only the third support changes the prediction
    images_changed = [volume[1], volume[2], np.flipud(volume[3]).copy()]
    masks_changed = [volume[1] > 0.5, mask, np.flipud(volume[3] > 0.5).copy()]
    changed = tiny_pipeline.segment_slices(images_changed, masks_changed, volume[4:6])
    assert np.abs(changed - three_shot).max() > 1e-4


def test_the_bank_is_empty_after_an_episode_and_after_an_error(tiny_pipeline, phantom):
    volume, mask = phantom
    tiny_pipeline.segment_slices([volume[2]], [mask], volume[:2])
    assert tiny_pipeline.bank.is_empty and tiny_pipeline.bank.mode == "off"
    with (
        pytest.raises(KeyboardInterrupt),
        torch.inference_mode(),
        tiny_pipeline.episode([volume[2]], [mask]) as episode,
    ):
        episode.predict(volume[:1])
        assert not tiny_pipeline.bank.is_empty
        raise KeyboardInterrupt
    assert tiny_pipeline.bank.is_empty and tiny_pipeline.bank.mode == "off"


def test_support_pass_uses_conv_in_ref_and_restores_conv_in(tiny_pipeline, phantom):
    volume, mask = phantom
    query_conv = tiny_pipeline.unet.conv_in
    calls = []
    handle = tiny_pipeline.conv_in_ref.conv.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    try:
        tiny_pipeline.segment_slices([volume[2], volume[3]], [mask, volume[3] > 0.5], volume[:3])
    finally:
        handle.remove()
    assert calls == [torch.Size([2, 8, 8, 8])]  # once, on the K = 2 support inputs [K, 8, h, w]
    assert tiny_pipeline.unet.conv_in is query_conv


def test_query_output_is_the_negated_u_net_output(tiny_pipeline, phantom):
    volume, mask = phantom
    pipe = tiny_pipeline
    seen = []
    handle = pipe.unet.register_forward_hook(lambda m, i, o: seen.append(o.sample.clone()))
    try:
        with torch.inference_mode(), pipe.episode([volume[2]], [mask]) as episode:
            query01 = torch.from_numpy(volume[:2])[:, None]
            query01 = torch.nn.functional.interpolate(query01, size=(64, 64), mode="bilinear", antialias=True)
            latents = pipe.predict_mask_latents(episode.context, query01)
    finally:
        handle.remove()
    assert len(seen) == 2  # support pass, query pass
    torch.testing.assert_close(latents, -seen[1])


def test_training_loss_reaches_the_trained_parts_only(tiny_pipeline):
    pipe = tiny_pipeline
    torch.manual_seed(0)
    images = torch.rand(3, 1, 64, 64)
    masks = (torch.rand(3, 1, 64, 64) > 0.5).float()
    generator = torch.Generator().manual_seed(0)
    loss = pipe.training_loss(images[:2], masks[:2], images[2:], masks[2:], generator=generator)
    loss.backward()
    assert torch.isfinite(loss)
    assert pipe.conv_in_ref.conv.weight.grad is not None and pipe.conv_in_ref.conv.weight.grad.abs().sum() > 0
    assert pipe.unet.conv_in.weight.grad is not None
    assert pipe.mapper.mlp[0].weight.grad is not None and pipe.mapper.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in pipe.vae.parameters())
    assert all(p.grad is None for p in pipe.image_encoder.parameters())
    assert pipe.bank.is_empty

"""Support-Query Interaction (SQI): query tokens attend to their own and the support slices' tokens.

A diffusers attention processor for the self-attention (``attn1``) of every transformer block of an
unmodified ``UNet2DConditionModel`` (installed with ``set_attn_processor``); cross-attention (``attn2``)
keeps its standard processor and attends to the VTCT token.

- "record" (support pass, K support slices in the batch): ordinary self-attention, and the layer's keys and
  values are kept in the :class:`SupportBank`, re-laid out as ONE sequence of ``K * N`` tokens
  ``[1, heads, K*N, head_dim]``.
- "query" (query pass, B query slices in the batch): each query slice attends over
  ``[own keys; keys of all K support slices]`` with the values likewise, using the same ``to_k``/``to_v``
  (the bank holds their outputs), through ``scaled_dot_product_attention``.
- "off": plain self-attention, identical to diffusers' ``AttnProcessor2_0``.

The bank is stored once per support set and shared by the B query slices. At attention time the bank must
sit beside each slice's own keys in one key tensor, so ``torch.cat`` materialises
``[b, heads, N + K*N, head_dim]`` for a chunk of ``b`` slices: this transient copy lives only inside the
layer call and the batch is cut into chunks whose keys + values stay under ``max_chunk_bytes`` (512 MiB by
default; at least one slice per chunk), so it is bounded whatever the batch size (for SD 1.5 at 32 x 32
latents, 3 shots, bf16: about 5 MiB per slice in the largest layer). The bank itself is never copied per
slice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

MODES = ("off", "record", "query")
DEFAULT_MAX_CHUNK_BYTES = 512 * 2**20


class SupportBank:
    """Keys and values of the support pass per self-attention layer: ``{layer: (k, v)}``, [1, h, K*N, d]."""

    def __init__(self) -> None:
        self.mode = "off"
        self._entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- state -----------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget every recorded key/value and go back to plain self-attention."""
        self._entries.clear()
        self.mode = "off"

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def is_empty(self) -> bool:
        return not self._entries

    @property
    def layers(self) -> list[str]:
        return list(self._entries)

    def tokens(self, layer: str) -> int:
        """Number of support tokens recorded for ``layer`` (``K * N``)."""
        return int(self._entries[layer][0].shape[2])

    @property
    def nbytes(self) -> int:
        return sum(
            k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self._entries.values()
        )

    # -- used by the processors ------------------------------------------------------------------------
    def put(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store the support pass's ``key``/``value [K, h, N, d]`` of ``layer`` as ``[1, h, K*N, d]``."""
        k, h, n, d = key.shape
        self._entries[layer] = (
            key.transpose(0, 1).reshape(1, h, k * n, d),
            value.transpose(0, 1).reshape(1, h, k * n, d),
        )

    def get(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return self._entries[layer]
        except KeyError:
            raise RuntimeError(
                f"SQI: no support keys recorded for {layer}; run the support pass in 'record' mode first"
            ) from None

    # -- modes -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, mode: str) -> Iterator[SupportBank]:
        """Run the block's U-Net calls in ``mode`` ("record" or "query"), then go back to "off"."""
        if mode not in MODES:
            raise ValueError(f"unknown SQI mode '{mode}'")
        previous, self.mode = self.mode, mode
        try:
            yield self
        finally:
            self.mode = previous

    def snapshot(self) -> tuple[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """The mode and entries now (shallow): for gradient checkpointing, which recomputes layers later."""
        return self.mode, dict(self._entries)

    @contextlib.contextmanager
    def replay(self, snapshot: tuple[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> Iterator[None]:
        """Within the block the bank is as it was at ``snapshot`` (then as before the block)."""
        saved = self.mode, self._entries
        self.mode, self._entries = snapshot[0], dict(snapshot[1])
        try:
            yield
        finally:
            self.mode, self._entries = saved

    @contextlib.contextmanager
    def episode(self) -> Iterator[SupportBank]:
        """One support set: the bank starts empty and is cleared on exit, also on error or cancellation."""
        self.clear()
        try:
            yield self
        finally:
            self.clear()


class SupportQueryAttnProcessor:
    """SQI self-attention processor (KV fusion), sharing one :class:`SupportBank` across all layers."""

    def __init__(self, bank: SupportBank, layer: str, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> None:
        self.bank = bank
        self.layer = layer
        self.max_chunk_bytes = max_chunk_bytes

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        mode = self.bank.mode
        if encoder_hidden_states is not None:
            raise ValueError("SQI processor is for self-attention (attn1) only")
        if mode == "query" and attention_mask is not None:
            raise ValueError("SQI query mode does not support an attention mask")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape  # [B, N, C]

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, N, d]
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, N, d]
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, h, N, d]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if mode == "query":
            hidden_states = self._attend_with_bank(query, key, value)  # [B, h, N, d]
        else:
            if mode == "record":
                self.bank.put(self.layer, key, value)
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attend_with_bank(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Attention of ``query [B, h, N, d]`` over ``[key; bank keys]`` -> ``[B, h, N, d]``, in chunks."""
        bank_key, bank_value = self.bank.get(self.layer)  # [1, h, K*N, d] each, shared by the batch
        bank_key = bank_key.to(dtype=key.dtype)
        bank_value = bank_value.to(dtype=value.dtype)
        batch, heads, n_own, dim = key.shape
        n_all = n_own + bank_key.shape[2]
        per_slice = 2 * heads * n_all * dim * key.element_size()  # bytes of one slice's keys + values
        chunk = max(1, min(batch, self.max_chunk_bytes // max(1, per_slice)))
        outputs = []
        for start in range(0, batch, chunk):
            part = slice(start, min(batch, start + chunk))
            b = part.stop - part.start
            k = torch.cat([key[part], bank_key.expand(b, -1, -1, -1)], dim=2)  # [b, h, N + K*N, d]
            v = torch.cat([value[part], bank_value.expand(b, -1, -1, -1)], dim=2)  # [b, h, N + K*N, d]
            outputs.append(F.scaled_dot_product_attention(query[part], k, v, dropout_p=0.0, is_causal=False))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)


def self_attention_layers(unet: torch.nn.Module) -> list[str]:
    """Names (as in ``unet.attn_processors``, without ``.processor``) of every ``attn1`` self-attention."""
    return [name[: -len(".processor")] for name in unet.attn_processors if name.endswith("attn1.processor")]


def install_support_query_interaction(
    unet: torch.nn.Module,
    bank: SupportBank | None = None,
    *,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> SupportBank:
    """Put an SQI processor on every ``attn1`` of ``unet`` (others unchanged); return the shared bank."""
    bank = bank or SupportBank()
    processors = {}
    for name, processor in unet.attn_processors.items():
        if name.endswith("attn1.processor"):
            processors[name] = SupportQueryAttnProcessor(bank, name[: -len(".processor")], max_chunk_bytes)
        else:
            processors[name] = processor
    if not any(isinstance(p, SupportQueryAttnProcessor) for p in processors.values()):
        raise ValueError("the U-Net has no self-attention (attn1) layers to attach SQI to")
    unet.set_attn_processor(processors)
    return bank


def remove_support_query_interaction(unet: torch.nn.Module) -> None:
    """Give every ``attn1`` the stock ``AttnProcessor2_0`` back (e.g. before ``save_pretrained``)."""
    processors = {
        name: AttnProcessor2_0() if isinstance(p, SupportQueryAttnProcessor) else p
        for name, p in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)

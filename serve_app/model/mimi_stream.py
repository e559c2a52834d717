"""Exact streaming Mimi decoding for many streams at once.

`MimiModel.decode` turns a whole code sequence into audio. To play the first words while the rest is
generated, `MimiStreamDecoder` decodes a few new frames per call and keeps, per stream, exactly the
state the full decode would carry across the chunk boundary: the upsampler's and SEANet's
transposed-conv tails, the causal convs' left context, and the decoder transformer's sliding-window
KV cache. Concatenating a stream's chunks gives the full decode of all its frames (up to float
rounding), whatever the chunking.

Streams live in slots of preallocated state tensors, so a GPU engine decodes the new frames of all
its active requests in one call. Lifecycle per stream: `reset(slot)` (or `acquire()`), any number of
`decode(...)` calls, then `free(slot)`. Resetting clears every state tensor with one indexed fill for
all the slots given, and never waits for the device (a CUDA element written from a Python number
would copy from pageable memory and synchronise).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from transformers import MimiModel
from transformers.models.mimi.modeling_mimi import MimiEuclideanCodebook

from serve_app.model import mimi_stream_seanet
from serve_app.model.kernels import triton_runs_on
from serve_app.model.mimi_codebooks import ProjectedCodebooks
from serve_app.model.mimi_layout import decoder_parts
from serve_app.model.mimi_stream_seanet import StreamingStack
from serve_app.model.mimi_stream_transformer import StreamingTransformer

if TYPE_CHECKING:
    from serve_app.model.mimi_stream_seanet_kernel import KernelSeanet

logger = logging.getLogger(__name__)


class MimiStreamDecoder:
    """Batched, slot-based streaming decoder over the weights of a transformers `MimiModel`.

    The model is used as is (same parameters, same device and dtype); state buffers follow the
    model's device and dtype. Output is float32.
    """

    def __init__(self, mimi: MimiModel, max_streams: int):
        if max_streams < 1:
            raise ValueError("max_streams must be >= 1")
        config = mimi.config
        if config.audio_channels != 1:
            raise ValueError("streaming decode supports mono Mimi models only")
        param = next(mimi.parameters())
        device, dtype = param.device, param.dtype
        _drop_stale_codebooks(mimi)
        self.mimi = mimi
        self.max_streams = max_streams
        self.num_codebooks = config.num_quantizers
        self.codebook_size = config.codebook_size
        self.device = device
        self._codebooks = ProjectedCodebooks(mimi.quantizer)
        parts = decoder_parts(mimi)
        upsample = [parts.upsample] if parts.upsample is not None else []
        self._upsample = StreamingStack(upsample, max_streams, device, dtype)
        self._transformer = StreamingTransformer(parts.transformer, max_streams, device, dtype)
        self._seanet = self._seanet_stack(parts.seanet_layers, max_streams, device, dtype)
        self.tokens_per_frame = parts.upsample.conv.stride[0] if parts.upsample is not None else 1
        self.frame_samples = self.tokens_per_frame * math.prod(config.upsampling_ratios)
        """PCM samples produced per code frame (1920 for the real Mimi)."""
        self._seen = torch.zeros(max_streams, dtype=torch.long, device=device)
        self._active = [False] * max_streams

    @property
    def free_slots(self) -> list[int]:
        return [slot for slot, active in enumerate(self._active) if not active]

    def acquire(self) -> int:
        """Reset and return a free slot; raises RuntimeError when all slots are taken."""
        free = self.free_slots
        if not free:
            raise RuntimeError(f"all {self.max_streams} Mimi stream slots are in use")
        self.reset(free[0])
        return free[0]

    def reset(self, *slots: int) -> None:
        """Start new streams in `slots`, forgetting whatever they decoded before."""
        for slot in slots:
            self._check_slot(slot)
        index = torch.tensor(slots, dtype=torch.long)
        if self.device.type == "cuda":
            index = index.pin_memory().to(self.device, non_blocking=True)
        self._upsample.reset(index)
        self._transformer.reset(index)
        self._seanet.reset(index)
        self._seen.index_fill_(0, index, 0)
        for slot in slots:
            self._active[slot] = True

    def free(self, slot: int) -> None:
        """Release `slot`; it must be reset before it decodes again."""
        self._check_slot(slot)
        self._active[slot] = False

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, slots: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Decode the next `n` frames of each stream in `slots`.

        codes: (B, num_codebooks, n) long; every stream in one call decodes the same `n >= 1` frames
        (group streams by `n`, or call once per group). slots: (B,) long, distinct, each reset.
        Returns (B, n * frame_samples) float32 PCM, the next samples of each stream.
        `check=False` skips the validation (which syncs with the device) for a trusted caller.
        """
        if check:
            self.validate(codes, slots)
        codes = codes.to(self.device)
        slots = slots.to(self.device)
        seen = self._seen[slots]
        fresh = seen == 0
        embeddings = self._codebooks.decode(codes)
        embeddings = self._upsample(embeddings, slots, fresh)
        hidden = self._transformer(embeddings.transpose(1, 2), slots, seen)
        if self._seanet.channels_last:  # (B, T, 1)
            pcm = self._seanet(hidden, slots, fresh)[..., 0]
        else:  # (B, 1, T)
            pcm = self._seanet(hidden.transpose(1, 2), slots, fresh)[:, 0]
        self._seen[slots] = seen + embeddings.shape[-1]
        return pcm.float()

    @staticmethod
    def _seanet_stack(
        layers: list, max_streams: int, device: torch.device, dtype: torch.dtype
    ) -> StreamingStack | KernelSeanet:
        """`KernelSeanet` where `SEANET_KERNEL` asks for it, Triton runs, it takes these layers and
        its first run works, else `StreamingStack`."""
        if mimi_stream_seanet.seanet_kernel_on(device) and triton_runs_on(device):
            from serve_app.model.mimi_stream_seanet_kernel import KernelSeanet

            try:
                seanet = KernelSeanet(layers, max_streams, device, dtype)
                seanet.probe()
                return seanet
            except ValueError as exc:  # layers it does not take
                logger.info("streaming SEANet: %s; decoding through StreamingStack", exc)
            except Exception:  # a GPU or Triton that cannot run it: the stack serves instead
                logger.exception(
                    "the streaming SEANet kernel failed on %s; decoding through StreamingStack", device
                )
        return StreamingStack(layers, max_streams, device, dtype)

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.max_streams:
            raise ValueError(f"slot {slot} out of range [0, {self.max_streams})")

    def validate(self, codes: torch.Tensor, slots: torch.Tensor) -> None:
        """Raise ValueError unless `decode(codes, slots)` is well-formed for the current slot states."""
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks or codes.shape[2] < 1:
            raise ValueError(f"codes must be (B, {self.num_codebooks}, n>=1), got {tuple(codes.shape)}")
        if codes.dtype != torch.long:
            raise ValueError(f"codes must be int64, got {codes.dtype}")
        if slots.dim() != 1 or slots.shape[0] != codes.shape[0]:
            raise ValueError(f"slots must be ({codes.shape[0]},), got {tuple(slots.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        slot_list = slots.tolist()
        if len(set(slot_list)) != len(slot_list):
            raise ValueError("slots in one decode call must be distinct")
        for slot in slot_list:
            self._check_slot(slot)
            if not self._active[slot]:
                raise ValueError(f"slot {slot} is not active: reset it before decoding")


def _drop_stale_codebooks(mimi: MimiModel) -> None:
    """Forget codebook tables cached before the model moved to another device or dtype.

    `MimiEuclideanCodebook.embed` caches `embed_sum / cluster_usage` in a plain attribute that
    `.to()` does not move, so a model decoded once on CPU fails (or runs in the old dtype) on GPU.
    """
    for module in mimi.quantizer.modules():
        if isinstance(module, MimiEuclideanCodebook) and module._embed is not None:
            cached, source = module._embed, module.embed_sum
            if cached.device != source.device or cached.dtype != source.dtype:
                module._embed = None

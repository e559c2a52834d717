"""Reference batched generation on the model API: prefill, frame loop, stop, decode.

Kept simple on purpose (one batch at a time, a host check per frame): it is the behaviour the
continuous-batching engine must reproduce, and what the first `Engine` runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from serve_app.engine.prompt import Prompt, build_prompt
from serve_app.engine.sampling import BatchSampler
from serve_app.engine.types import Audio, FinishReason, GenerationRequest, Segment
from serve_app.model.csm import CsmModel
from serve_app.model.mimi import MimiCodec
from serve_app.model.tokenizer import TextTokenizer


@dataclass
class GeneratedCodes:
    codes: torch.Tensor  # (frames, 32) long, CPU, without the end-of-audio frame
    finish_reason: FinishReason
    dropped_context_turns: int = 0


def resolve_context(codec: MimiCodec, context: Sequence[Segment]) -> list[Segment]:
    """Context turns with codes: audio is encoded once, turns that carry codes are kept as they are."""
    out = []
    for seg in context:
        if seg.codes is None:
            codes = codec.encode(seg.audio).cpu().numpy()  # type: ignore[arg-type]
            seg = dataclasses.replace(seg, audio=None, codes=codes)
        out.append(seg)
    return out


class Generator:
    def __init__(
        self,
        model: CsmModel,
        tokenizer: TextTokenizer,
        codec: MimiCodec,
        *,
        max_batch_size: int = 4,
        restrict_to_codec: bool = True,
    ) -> None:
        """`restrict_to_codec` samples only ids the codec can decode (< 2048): ids 2048..2050
        exist in the model's vocabulary but are not Mimi codes. Parity checks turn it off."""
        self.model, self.tokenizer, self.codec = model, tokenizer, codec
        self.max_batch_size = max_batch_size
        self.vocab_limit: int | None = model.cfg.codec_codebook_size if restrict_to_codec else None
        if model.max_batch_size < max_batch_size:
            model.setup_caches(max_batch_size)

    @property
    def device(self) -> torch.device:
        return self.model.codebook0_head.weight.device

    def prepare(self, request: GenerationRequest) -> Prompt:
        context = resolve_context(self.codec, request.context)
        return build_prompt(
            self.tokenizer, request.text, request.speaker, context, request.max_frames, self.model.max_seq_len
        )

    def generate_codes(
        self, requests: Sequence[GenerationRequest], seeds: Sequence[int] | None = None
    ) -> list[GeneratedCodes]:
        prompts = [self.prepare(r) for r in requests]
        out: list[GeneratedCodes] = []
        for start in range(0, len(requests), self.max_batch_size):
            stop = start + self.max_batch_size
            out += self._run_batch(
                requests[start:stop], prompts[start:stop], None if seeds is None else seeds[start:stop]
            )
        return out

    def generate(
        self, requests: Sequence[GenerationRequest], seeds: Sequence[int] | None = None
    ) -> list[Audio]:
        results = self.generate_codes(requests, seeds)
        pcms = self.codec.decode_batch([r.codes for r in results])
        return [
            Audio(
                pcm=pcm.cpu().numpy().astype(np.float32),
                codes=r.codes.numpy(),
                finish_reason=r.finish_reason,
                dropped_context_turns=r.dropped_context_turns,
            )
            for pcm, r in zip(pcms, results)
        ]

    @torch.inference_mode()
    def _run_batch(
        self, requests: Sequence[GenerationRequest], prompts: Sequence[Prompt], seeds: Sequence[int] | None
    ) -> list[GeneratedCodes]:
        model, dev, b = self.model, self.device, len(requests)
        lens = torch.tensor([len(p) for p in prompts], device=dev)
        width = int(lens.max())
        tokens = torch.zeros(b, width, prompts[0].tokens.shape[1], dtype=torch.long, device=dev)
        mask = torch.zeros(tokens.shape, dtype=torch.bool, device=dev)
        for i, p in enumerate(prompts):  # right padding
            tokens[i, : len(p)], mask[i, : len(p)] = p.tokens.to(dev), p.mask.to(dev)
        steps = torch.arange(width, device=dev).expand(b, width)
        positions = torch.where(steps < lens[:, None], steps, -1)
        h = model.backbone_forward(model.embed_rows(tokens, mask), positions)
        h_last = h[torch.arange(b, device=dev), lens - 1]

        sampler = BatchSampler.from_params(
            [r.sampling for r in requests], dev, model.cfg.audio_vocab_size, self.vocab_limit, seeds
        )
        frames: list[list[torch.Tensor]] = [[] for _ in range(b)]
        reasons: list[FinishReason | None] = [None] * b
        eos_id = model.cfg.codebook_eos_id
        for f in range(max(r.max_frames for r in requests)):
            sampler.frame.fill_(f)
            codes = model.generate_frame(h_last, sampler)
            host = codes.cpu()
            for i, r in enumerate(requests):
                if reasons[i] is not None:
                    continue
                if bool((host[i] == eos_id).all()):
                    reasons[i] = FinishReason.END_OF_AUDIO
                    continue
                frames[i].append(host[i])
                if len(frames[i]) >= r.max_frames:
                    reasons[i] = FinishReason.LENGTH
            if all(reason is not None for reason in reasons):
                break
            active = torch.tensor([reason is None for reason in reasons], device=dev)
            step_pos = torch.where(active, lens + f, -1).unsqueeze(1)
            h_last = model.backbone_forward(model.embed_frame(codes).unsqueeze(1), step_pos)[:, 0]

        return [
            GeneratedCodes(
                codes=torch.stack(fr) if fr else torch.zeros(0, model.cfg.num_codebooks, dtype=torch.long),
                finish_reason=reason or FinishReason.LENGTH,
                dropped_context_turns=p.dropped_turns,
            )
            for fr, reason, p in zip(frames, reasons, prompts)
        ]

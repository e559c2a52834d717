"""Our CSM core vs transformers' CsmForConditionalGeneration (the oracle), same tiny random weights.

The oracle's inputs come from transformers' own CsmProcessor and chat template (context audio
encoded by its Mimi); ours from our tokenizer, prompt builder and MimiCodec, loaded from the
`save_pretrained` directory by `load_model`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from serve_app.engine.generator import Generator
from serve_app.engine.prompt import build_prompt
from serve_app.engine.types import GenerationRequest, SamplingParams, Segment
from serve_app.model.loading import LoadedModel, load_model
from tests.support_checkpoints import reference_model, tiny_processor, write_hf_checkpoint

pytestmark = [pytest.mark.parity, pytest.mark.usefixtures("one_thread")]

RNG = np.random.RandomState(0)
AUDIO_A = (RNG.randn(1920 * 4 + 300) * 0.1).astype(np.float32)  # not a whole number of frames
AUDIO_B = (RNG.randn(1920 * 3) * 0.1).astype(np.float32)

# (speaker, text, audio or None) turns; the last turn is the target.
CONVERSATIONS = [
    [(0, "hello world", None)],
    [(1, "ctx one", AUDIO_A), (0, "target", None)],
    [(0, "a", AUDIO_A), (1, "bb", AUDIO_B), (0, "third one", None)],
]


def as_chat(turns: list) -> list[dict[str, Any]]:
    msgs = []
    for speaker, text, audio in turns:
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if audio is not None:
            content.append({"type": "audio", "path": audio})
        msgs.append({"role": str(speaker), "content": content})
    return msgs


def as_request(turns: list, frames: int = 20) -> GenerationRequest:
    *context, (speaker, text, _) = turns
    return GenerationRequest(
        text=text,
        speaker=speaker,
        context=[Segment(text=t, speaker=s, audio=a) for s, t, a in context],
        max_audio_length_ms=frames * 80,
        sampling=SamplingParams(top_k=1, seed=0),
    )


@pytest.fixture(scope="module")
def oracle() -> Any:
    return reference_model(seed=0)


@pytest.fixture(scope="module")
def ours(oracle: Any, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = write_hf_checkpoint(tmp_path_factory.mktemp("csm-hf"), oracle)
    return load_model(str(path), device="cpu")


def oracle_forward(oracle: Any, convs: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codebook-0 logits, last hidden states and the attention mask for left-padded chats."""
    inputs = tiny_processor().apply_chat_template(
        [as_chat(c) for c in convs], tokenize=True, return_dict=True
    )
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = oracle(**inputs, position_ids=positions, output_hidden_states=True)
    return out.logits, out.hidden_states[-1], mask.bool()


def our_forward(ours: LoadedModel, convs: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same through our API, right-padded, in slots given in reverse order."""
    gen = Generator(ours.model, ours.tokenizer, ours.codec, max_batch_size=4)
    prompts = [gen.prepare(as_request(c)) for c in convs]
    lens = torch.tensor([len(p) for p in prompts])
    width = int(lens.max())
    tokens = torch.zeros(len(convs), width, 33, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)], mask[i, : len(p)] = p.tokens, p.mask
    steps = torch.arange(width).expand(len(convs), width)
    valid = steps < lens[:, None]
    slots = torch.arange(len(convs)).flip(0) + 1
    with torch.no_grad():
        h = ours.model.backbone_forward(
            ours.model.embed_rows(tokens, mask), torch.where(valid, steps, -1), slots
        )
        return ours.model.codebook0_logits(h), h, valid


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * float(expected.abs().max()))


@pytest.mark.parametrize("batch", [[2], [0, 1, 2]], ids=["batch1", "batch3"])
def test_parity_codebook0_logits_match_on_every_prompt_row(
    oracle: Any, ours: LoadedModel, batch: list[int]
) -> None:
    convs = [CONVERSATIONS[i] for i in batch]
    ref_logits, _, ref_valid = oracle_forward(oracle, convs)
    our_logits, _, our_valid = our_forward(ours, convs)
    assert ref_valid.sum(1).tolist() == our_valid.sum(1).tolist()  # same prompt lengths
    for i in range(len(convs)):  # the oracle pads left, we pad right
        assert_close_rel(our_logits[i][our_valid[i]], ref_logits[i][ref_valid[i]])


def test_parity_depth_decoder_logits_for_all_31_codebooks(oracle: Any, ours: LoadedModel) -> None:
    _, ref_h, _ = oracle_forward(oracle, CONVERSATIONS)
    h_last = ref_h[:, -1]  # left padding: the last column is every row's last prompt row
    codes = torch.randint(0, 2048, (len(CONVERSATIONS), 32), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([torch.zeros_like(codes[:, :1]), codes[:, :31]], dim=1)
    with torch.no_grad():
        ref = oracle.depth_decoder(input_ids=ids, backbone_last_hidden_state=h_last).logits  # (B, 31, V)
        ours.model.setup_caches(4)
        mine = [ours.model.depth_start(h_last, codes[:, 0])]
        mine += [ours.model.depth_step(codes[:, i - 1], i) for i in range(2, 32)]
    assert_close_rel(torch.stack(mine, dim=1), ref)


def test_parity_prompt_rows_equal_the_processor_sequence(ours: LoadedModel) -> None:
    """Our rows carry the processor's text tokens where it has text, and audio (incl. the zero EOS
    frame) exactly where it has <|AUDIO|>/<|audio_eos|> placeholders."""
    inputs = tiny_processor().apply_chat_template(
        [as_chat(CONVERSATIONS[2])], tokenize=True, return_dict=True
    )
    ids = inputs["input_ids"][0]
    req = as_request(CONVERSATIONS[2])
    context = [
        Segment(text=s.text, speaker=s.speaker, codes=ours.codec.encode(s.audio).numpy()) for s in req.context
    ]
    prompt = build_prompt(ours.tokenizer, req.text, req.speaker, context, max_frames=20)
    audio_id, eos_id = (
        ours.tokenizer.backend.token_to_id("<|AUDIO|>"),
        ours.tokenizer.backend.token_to_id("<|audio_eos|>"),
    )
    is_text = prompt.mask[:, 32]
    assert torch.equal(prompt.tokens[is_text, 32], ids[(ids != audio_id) & (ids != eos_id)])
    assert torch.equal(~is_text, (ids == audio_id) | (ids == eos_id))
    assert bool(prompt.mask[~is_text, :32].all()) and not bool(prompt.mask[is_text, :32].any())
    assert bool((prompt.tokens[ids == eos_id, :32] == 0).all())


def test_parity_greedy_generation_yields_identical_codes_batch3(oracle: Any, ours: LoadedModel) -> None:
    """Three prompts of different lengths (the oracle left-pads, we right-pad), 20 frames each."""
    frames = 20
    convs = CONVERSATIONS
    inputs = tiny_processor().apply_chat_template(
        [as_chat(c) for c in convs], tokenize=True, return_dict=True
    )
    with torch.no_grad():
        ref = oracle.generate(**inputs, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=frames)
    gen = Generator(ours.model, ours.tokenizer, ours.codec, max_batch_size=3, restrict_to_codec=False)
    mine = gen.generate_codes([as_request(c, frames) for c in convs])
    assert ref.shape == (len(convs), frames, 32)
    for i, result in enumerate(mine):
        assert torch.equal(result.codes, ref[i]), f"row {i} diverges"

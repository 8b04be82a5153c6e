"""How well an audio adapter answers: greedy exact match, and closed-set likelihood ranking.

`greedy` is what serving does (transformers `generate(inputs_embeds=...)`, do_sample=False).
`candidate_scores` is the frozen LLM's log-likelihood of each candidate answer given a prompt;
`calibrated_predictions` ranks the candidates by that score minus the candidate's mean score over
reference prompts (contextual calibration: a tiny random base prefers some answers whatever the
audio says, so raw scores mostly rank by that prior; the difference is what the audio changed).
"""

from __future__ import annotations

import torch

from floe.adapters.audio.model import AudioModel
from floe.adapters.audio.train import Example, batch_inputs


def prompt_of(example: Example) -> Example:
    """The example without its target turn."""
    n = next(k for k, t in enumerate(example.labels) if t != -100)
    return Example(example.ids[:n], [-100] * n, example.clips)


def target_tokens(example: Example, eos: int) -> list[int]:
    return [t for t in example.labels if t not in (-100, eos)]


@torch.no_grad()
def greedy(llm, model: AudioModel, table: torch.Tensor, pid: int, example: Example, eos: int,
           max_new_tokens: int = 8) -> list[int]:
    """Greedy answer tokens (up to the first eos) for an example's prompt."""
    embeds, mask, _ = batch_inputs(model, table, pid, [prompt_of(example)])
    out = llm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                       max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos)[0].tolist()
    return out[:out.index(eos)] if eos in out else out


@torch.no_grad()
def candidate_scores(llm, model: AudioModel, table: torch.Tensor, pid: int, example: Example,
                     candidates: list[list[int]]) -> torch.Tensor:
    """log p(candidate tokens | the example's prompt) for each candidate: [C]."""
    prompt = prompt_of(example)
    batch = [Example(prompt.ids + c, prompt.labels + c, prompt.clips) for c in candidates]
    embeds, mask, labels = batch_inputs(model, table, pid, batch)
    logp = torch.log_softmax(llm(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].float(), -1)
    target = labels[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (picked * (target != -100)).sum(-1)


def calibrated_predictions(scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """argmax over candidates of score - mean reference score: [n] candidate indices."""
    return (scores - reference.mean(0, keepdim=True)).argmax(-1)

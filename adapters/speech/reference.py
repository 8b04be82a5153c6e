"""The reference of the speech tests: one spoken turn computed from the method's definition with
plain transformers and torch (fp32, greedy, no KV cache, no streaming):

    whole-utterance fbank (zero-padded to whole chunks) -> CMVN -> the encoder over all frames at
    once with the chunk-causal attention mask -> adapter -> [opening, turn prompt (if the model
    has one), audio, generation prompt] embeddings -> the frozen LLM re-run over the whole
    sequence for every token (greedy) -> per phrase (punctuation or `phrase_tokens`), the
    predicting hidden states and the phrase's text -> the model's speech (floe's: speech decoder
    -> Griffin-Lim).

A released model's encoder (Freeze-Omni's) is defined by its streaming: its chunks run one by
one, alone, so what the reference checks there is the LLM side (cache, batching, template).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from floe.adapters.audio.decode import fbank
from floe.adapters.speech.model import SpeechModel
from floe.adapters.speech.session import PUNCTUATION, LoadedSpeech, chat_template, phrases
from floe.server.runtime.model import FrozenModel


@dataclass
class ReferenceTurn:
    tokens: list[int]
    transcript: str
    phrases: list[list[int]]
    pcm: list[torch.Tensor]  # per phrase, float 24 kHz
    audio_embeds: torch.Tensor
    states: list[torch.Tensor]  # per phrase, the hidden states that drive the speech decoder


def audio_embeddings(loaded: LoadedSpeech, pcm16k: np.ndarray) -> torch.Tensor:
    cfg, model = loaded.cfg, loaded.model
    feats = torch.from_numpy(fbank(pcm16k, cfg.num_mel_bins))
    rest = (-feats.shape[0]) % cfg.chunk_frames
    feats = torch.cat([feats, feats.new_zeros(rest, cfg.num_mel_bins)])
    with torch.no_grad():
        if isinstance(model, SpeechModel):
            return model.adapter(model.encoder.forward_full(model.normalize(feats)[None]))[0]
        stream, out = None, []
        for chunk in model.normalize(feats).split(cfg.chunk_frames):
            embeds, (stream,) = model.encode_stream(chunk[None], [stream])
            out.append(embeds[0])
        return torch.cat(out)


def reference_turn(llm: FrozenModel, loaded: LoadedSpeech, pcm16k: np.ndarray, instructions: str = "",
                   max_tokens: int | None = None) -> ReferenceTurn:
    cfg = loaded.cfg
    template = chat_template(llm, instructions)
    audio = audio_embeddings(loaded, pcm16k)
    embed = lambda ids: llm.embed(torch.tensor(ids, dtype=torch.long))  # noqa: E731
    prompt = [] if loaded.model.turn_prompt is None else [loaded.model.turn_prompt]
    with torch.no_grad():
        seq = torch.cat([embed(template.opening), *prompt, audio, embed(template.to_assistant)])
        tokens: list[int] = []
        states: list[torch.Tensor] = []
        limit = min(max_tokens or cfg.max_response_tokens, cfg.max_response_tokens)
        while len(tokens) < limit:
            hidden = llm.decoder(inputs_embeds=seq[None], use_cache=False).last_hidden_state[0, -1]
            token = int(llm.lm.lm_head(hidden).argmax())
            if token in template.stop_ids:
                break
            tokens.append(token)
            states.append(hidden)
            seq = torch.cat([seq, embed([token])])
    phrases: list[list[int]] = [[]]
    bounds: list[list[torch.Tensor]] = [[]]
    for token, state in zip(tokens, states):
        phrases[-1].append(token)
        bounds[-1].append(state)
        piece = llm.tokenizer.decode([token])
        if any(c in PUNCTUATION for c in piece) or len(phrases[-1]) >= cfg.phrase_tokens:
            phrases.append([])
            bounds.append([])
    kept = [(p, b) for p, b in zip(phrases, bounds) if p]
    pcm, said, end = [], "", 0
    for p, b in kept:  # a phrase's text: what its tokens add to the decoded answer, as the session sends it
        end += len(p)
        text = llm.tokenizer.decode(tokens[:end], skip_special_tokens=True)
        pcm.append(loaded.model.speak(llm, torch.stack(b), text[len(said):]))
        said = text
    return ReferenceTurn(tokens, llm.tokenizer.decode(tokens, skip_special_tokens=True), [p for p, _ in kept],
                         pcm, audio, [torch.stack(b) for _, b in kept])


def run_turn(llm: FrozenModel, loaded: LoadedSpeech, state: Any, pcm16k: np.ndarray,
             max_steps: int = 400) -> list[dict[str, Any]]:
    """Drive one session through a spoken turn with `session.step` alone (no server)."""
    from floe.adapters.speech.session import Audio, Commit, Respond, step

    ops: list[Any] = [Audio(pcm16k), Commit(), Respond()]
    events: list[dict[str, Any]] = []
    for _ in range(max_steps):
        events.extend(step(llm, [(loaded, state, ops)])[0])
        ops = []
        if any(e["type"] == "done" for e in events):
            return events
    raise AssertionError("the turn did not finish")


def reference_speech(llm: FrozenModel, loaded: LoadedSpeech, text: str) -> np.ndarray:
    """What `POST /v1/audio/speech` computes for `text`, from the definition: the frozen LLM reads
    the text as the assistant's turn (teacher-forced, no cache); the last hidden state of each of
    its tokens drives the speech decoder, phrase by phrase; Griffin-Lim gives 24 kHz PCM."""
    ids = llm.tokenize(text)
    template = chat_template(llm, "")
    prompt = template.opening + template.to_assistant
    with torch.no_grad():
        hidden = llm.decoder(input_ids=torch.tensor([prompt + ids]), use_cache=False).last_hidden_state[0]
        states = hidden[len(prompt) - 1:len(prompt) - 1 + len(ids)]
        return np.concatenate([loaded.model.speak(llm, states[a:b], llm.tokenizer.decode(
            ids[a:b], skip_special_tokens=True)).numpy() for a, b in phrases(llm, ids, loaded.cfg.phrase_tokens)])

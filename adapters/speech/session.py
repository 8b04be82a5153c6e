"""Speech sessions on the frozen LLM: streaming input, one batched forward per tick, spoken output.

A session's conversation is the base's own chat template, rendered around the audio:

    [opening: template up to the first user turn's content] [audio embeddings, 2 per 160 ms chunk]
    [user footer + assistant header] [answer tokens] [assistant footer] [next user header] ...

Audio is appended to the LLM's KV cache while the user speaks (Freeze-Omni's live cache), so a
commit costs only the footer, and the first token follows at once.

`step` batches every session with work this tick into ONE LLM forward, whatever their positions:
each row's new embeddings (right-padded to the longest) attend to its own past, which is
left-padded to the longest past inside a transformers `DynamicCache`, with a 2D attention mask
that hides the padding and per-row position ids continuing each session's own positions. After
the forward, each row's new keys / values are cut out of the batch cache and appended to its
session's cache, so no session ever sees another's padding. The streaming encoder is batched the
same way (one chunk per row, the rows' caches left-padded). The speech decoder and vocoder run per
phrase after the forward (phrases differ in length; Griffin-Lim is per signal).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from floe.adapters.speech import INPUT_SAMPLE_RATE, SessionConfig, SpeechConfig
from floe.adapters.speech.model import SpeechNet, load, pcm16
from floe.server.errors import InvalidRequest
from floe.server.kinds import AdapterKind
from floe.server.runtime.model import FrozenModel

PUNCTUATION = set(".,!?;:\n")
OPEN, USER, ASSISTANT = "\x01", "\x02", "\x03"


@dataclass(frozen=True)
class Template:
    """Token ids of the chat template's pieces around a spoken user turn."""

    opening: list[int]  # up to the first user turn's content (BOS, system turn, user header)
    to_assistant: list[int]  # user footer + assistant header (the generation prompt)
    assistant_end: list[int]  # assistant footer
    next_user: list[int]  # a later user turn's header
    stop_ids: frozenset[int]


def chat_template(llm: FrozenModel, instructions: str) -> Template:
    """The template's pieces, found by rendering conversations with sentinel contents."""
    tok = llm.tokenizer
    system = [{"role": "system", "content": instructions}] if instructions else []

    def render(messages: list[dict[str, str]], generation: bool) -> str:
        return tok.apply_chat_template(system + messages, tokenize=False, add_generation_prompt=generation)

    first = render([{"role": "user", "content": OPEN}], True)
    opening, _, to_assistant = first.partition(OPEN)
    turn = render([{"role": "user", "content": OPEN}, {"role": "assistant", "content": ASSISTANT}], False)
    assistant_end = turn.partition(ASSISTANT)[2]
    two = render([{"role": "user", "content": OPEN}, {"role": "assistant", "content": ASSISTANT},
                  {"role": "user", "content": USER}], True)
    if not two.startswith(turn):
        raise InvalidRequest("the base's chat template does not render turns incrementally; a speech "
                             "session cannot extend it", param="model")
    next_user = two[len(turn):].partition(USER)[0]
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    stops = {i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if isinstance(i, int)
             and i != tok.unk_token_id}
    end = ids(assistant_end)
    if end:
        stops.add(end[0])
    return Template(ids(opening), ids(to_assistant), end, ids(next_user), frozenset(stops))


@dataclass(eq=False)
class LoadedSpeech:
    model: SpeechNet
    directory: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cfg(self) -> SpeechConfig:
        return self.model.cfg


def load_for_serving(directory: Path, llm: FrozenModel) -> LoadedSpeech:
    """floe's speech directory (its base named by fingerprint), or Freeze-Omni's released layout
    (its base checked by the LLM width it expects)."""
    from floe.adapters.speech import freeze_omni

    if freeze_omni.is_freeze_omni(directory):
        return LoadedSpeech(freeze_omni.load(directory, llm.hidden_size), Path(directory))
    manifest = AdapterKind.read_manifest(directory)
    AdapterKind.check_base(manifest, llm.fingerprint)
    model: SpeechNet = load(directory)
    if model.cfg.llm_hidden != llm.hidden_size:
        raise InvalidRequest(f"adapter width {model.cfg.llm_hidden} != the base's {llm.hidden_size}",
                             param="source")
    return LoadedSpeech(model, Path(directory))


# -- session state --------------------------------------------------------------------------------
@dataclass(eq=False)
class Response:
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    phrase_states: list[torch.Tensor] = field(default_factory=list)
    phrase_tokens: list[int] = field(default_factory=list)
    text: str = ""  # transcript sent so far
    started: bool = False  # the generation prompt has been fed


@dataclass(eq=False)
class SessionState:
    config: SessionConfig
    template: Template
    fbank: Any  # kaldi_native_fbank.OnlineFbank
    max_context: int
    chunk_frames: int
    frames_read: int = 0
    feats: list[np.ndarray] = field(default_factory=list)  # fbank frames not yet in a chunk
    enc_stream: Any = None  # the encoder's own per-session cache (SpeechNet.encode_stream)
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per LLM layer [kv_heads, L, head_dim]
    length: int = 0
    pending: list[torch.Tensor] = field(default_factory=list)  # embeddings to feed [n, d]
    pending_ids: list[int] = field(default_factory=list)  # and the ids of token rows, for the record
    backlog: list[np.ndarray] = field(default_factory=list)  # 16 kHz audio waiting for a response to end
    user_open: bool = False  # the current user turn's header has been fed or queued
    commit: bool = False  # flush the partial chunk
    respond: Response | None = None  # asked for, not started yet
    response: Response | None = None  # in progress
    closed: bool = False
    inputs: list[str] = field(default_factory=list)  # what was fed (the tests' record): "t:<id>" / "a"
    mark: tuple[int, Any] = (0, None)  # after the user turn's header (and prompt): (length, encoder stream)
    trace: list[torch.Tensor] | None = None  # set to a list: each phrase's hidden states (tests)
    speak: bool = True  # False: text only (transcriptions)


def new_fbank(num_mel_bins: int) -> Any:
    import kaldi_native_fbank as knf

    from floe.adapters.audio.decode import fbank_options

    return knf.OnlineFbank(fbank_options(num_mel_bins))


def open_session(llm: FrozenModel, loaded: LoadedSpeech, config: SessionConfig) -> SessionState:
    template = chat_template(llm, config.instructions)
    max_context = int(getattr(llm.config, "max_position_embeddings", 2048))
    state = SessionState(config, template, new_fbank(loaded.cfg.num_mel_bins), max_context, loaded.cfg.chunk_frames)
    _queue_tokens(llm, state, template.opening)  # it ends with the first user turn's header
    _queue_prompt(loaded, state)
    state.user_open = True
    state.mark = (sum(p.shape[0] for p in state.pending), None)
    return state


def busy(state: SessionState) -> bool:
    """Work for the next tick without new input: queued embeddings, an answer being spoken or
    waiting for its audio, audio waiting for the encoder."""
    return bool(state.pending or state.response is not None or state.respond is not None
                or (state.backlog and state.response is None) or len(state.feats) >= state.chunk_frames)


def _open_user_turn(llm: FrozenModel, loaded: LoadedSpeech, state: SessionState) -> None:
    if not state.user_open:
        _queue_tokens(llm, state, state.template.next_user)
        _queue_prompt(loaded, state)
        if loaded.model.stream_per_turn:
            state.enc_stream = None
        state.user_open = True
        state.mark = (state.length + sum(p.shape[0] for p in state.pending), state.enc_stream)


def _queue_tokens(llm: FrozenModel, state: SessionState, ids: list[int]) -> None:
    if ids:
        state.pending.append(llm.embed(torch.tensor(ids)).detach())
        state.inputs.extend(f"t:{i}" for i in ids)


def _queue_prompt(loaded: LoadedSpeech, state: SessionState) -> None:
    prompt = loaded.model.turn_prompt
    if prompt is not None:
        state.pending.append(prompt.detach())
        state.inputs.extend("p" for _ in range(prompt.shape[0]))


# -- ops: what the gateway sends a session ---------------------------------------------------------
@dataclass(frozen=True)
class Audio:
    pcm: np.ndarray  # 16 kHz mono float32


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Respond:
    max_output_tokens: int | None = None


@dataclass(frozen=True)
class Cancel:
    pass


@dataclass(frozen=True)
class Clear:
    """Drop the uncommitted user audio: it was already appended to the caches, so they are cut
    back to the user turn's header."""


def apply(llm: FrozenModel, loaded: LoadedSpeech, state: SessionState, ops: list[Any],
          events: list[dict[str, Any]]) -> None:
    for op in ops:
        if isinstance(op, Audio):
            state.backlog.append(np.asarray(op.pcm, dtype=np.float32))
        elif isinstance(op, Commit):
            state.backlog.append(np.zeros(0, dtype=np.float32))  # marks where the commit falls
            state.commit = True
        elif isinstance(op, Respond):
            limit = loaded.cfg.max_response_tokens
            want = op.max_output_tokens or state.config.max_output_tokens or limit
            state.respond = Response(max_tokens=min(want, limit))
        elif isinstance(op, Clear):
            _clear(state, loaded)
        elif isinstance(op, Cancel):
            if state.response is not None:
                _finish(llm, loaded, state, events, "cancelled", "client_cancelled")
            elif state.respond is not None:
                state.respond = None
                events.append({"type": "done", "status": "cancelled", "reason": "client_cancelled",
                               "transcript": ""})


def _clear(state: SessionState, loaded: LoadedSpeech) -> None:
    state.backlog.clear()
    if state.response is not None:
        return  # the answer's own input is not the buffer's
    state.feats.clear()
    state.commit = False
    state.fbank = new_fbank(loaded.cfg.num_mel_bins)
    state.frames_read = 0
    length, enc_stream = state.mark
    if state.user_open and state.kv is not None and state.length > length:
        state.kv = [(k[:, :length].clone(), v[:, :length].clone()) for k, v in state.kv]
        state.length = length
        state.enc_stream = enc_stream
        state.pending.clear()


def _feed_audio(state: SessionState, loaded: LoadedSpeech) -> None:
    """Move backlog audio into the fbank (only while no answer is being spoken)."""
    if state.response is not None:
        return
    cfg = loaded.cfg
    while state.backlog:
        pcm = state.backlog.pop(0)
        if pcm.size:
            state.fbank.accept_waveform(float(INPUT_SAMPLE_RATE), (pcm * 32768.0).tolist())
            ready = state.fbank.num_frames_ready
            for i in range(state.frames_read, ready):
                state.feats.append(np.asarray(state.fbank.get_frame(i), dtype=np.float32))
            state.frames_read = ready
        elif state.commit:
            # the commit: the fbank's tail and a zero-padded last chunk (silence) close the turn
            state.fbank.input_finished()
            ready = state.fbank.num_frames_ready
            for i in range(state.frames_read, ready):
                state.feats.append(np.asarray(state.fbank.get_frame(i), dtype=np.float32))
            rest = len(state.feats) % cfg.chunk_frames
            if rest:
                state.feats.extend(np.zeros(cfg.num_mel_bins, dtype=np.float32)
                                   for _ in range(cfg.chunk_frames - rest))
            state.fbank = new_fbank(cfg.num_mel_bins)
            state.frames_read = 0
            state.commit = False
            break


# -- the batched step ------------------------------------------------------------------------------
def step(llm: FrozenModel, batch: list[tuple[LoadedSpeech, SessionState, list[Any]]],
         max_chunks: int = 8) -> list[list[dict[str, Any]]]:
    """Apply each session's ops, encode the audio chunks ready, run one LLM forward over every
    session with input, decode a token for every answering session; events per session."""
    events: list[list[dict[str, Any]]] = [[] for _ in batch]
    with torch.no_grad():
        for (loaded, state, ops), out in zip(batch, events):
            apply(llm, loaded, state, ops, out)
            _feed_audio(state, loaded)
        _encode(llm, batch, max_chunks)
        for (loaded, state, _), out in zip(batch, events):
            if state.respond is not None and not state.feats and not state.backlog and state.response is None:
                state.response, state.respond = state.respond, None
                out.append({"type": "started"})
                _open_user_turn(llm, loaded, state)  # an answer with no new user audio: an empty user turn
                _queue_tokens(llm, state, state.template.to_assistant)
                state.user_open = False
        rows = [i for i, (_, state, _) in enumerate(batch) if state.pending]
        for i in rows:  # the context bound: a full session ends its answer, and takes no more input
            state = batch[i][1]
            if state.length + sum(p.shape[0] for p in state.pending) > state.max_context:
                state.pending.clear()
                if state.response is not None:
                    _finish(llm, batch[i][0], state, events[i], "incomplete", "max_output_tokens", feed=False)
                events[i].append({"type": "error", "code": "session_context_full",
                                  "message": f"the session reached the base's context of {state.max_context} "
                                             "positions; open a new session"})
        rows = [i for i in rows if batch[i][1].pending]
        if rows:
            hidden = forward_rows(llm, [batch[i][1] for i in rows])
            for row, i in enumerate(rows):
                loaded, state, _ = batch[i]
                if state.response is not None:
                    _decode(llm, loaded, state, hidden[row], events[i])
    return events


def _encode(llm: FrozenModel, batch: list[tuple[LoadedSpeech, SessionState, list[Any]]], max_chunks: int) -> None:
    """Up to `max_chunks` full chunks per session -> embeddings queued for the LLM; the encoder
    runs batched over the sessions of one adapter, one chunk per row per pass."""
    by_model: dict[int, list[int]] = {}
    for i, (loaded, state, _) in enumerate(batch):
        if len(state.feats) >= loaded.cfg.chunk_frames and state.response is None:
            by_model.setdefault(id(loaded), []).append(i)
    for indices in by_model.values():
        loaded = batch[indices[0]][0]
        model, cfg = loaded.model, loaded.cfg
        for _ in range(max_chunks):
            live = [i for i in indices if len(batch[i][1].feats) >= cfg.chunk_frames]
            if not live:
                break
            states = [batch[i][1] for i in live]
            for state in states:
                _open_user_turn(llm, loaded, state)
            chunk = torch.from_numpy(np.stack([np.stack(s.feats[:cfg.chunk_frames]) for s in states]))
            for s in states:
                del s.feats[:cfg.chunk_frames]
            embeds, streams = model.encode_stream(model.normalize(chunk), [s.enc_stream for s in states])
            for state, emb, stream in zip(states, embeds, streams):
                state.enc_stream = stream
                state.pending.append(emb)
                state.inputs.extend("a" for _ in range(emb.shape[0]))


def forward_rows(llm: FrozenModel, states: list[SessionState]) -> torch.Tensor:
    """One LLM forward over each session's pending embeddings, at its own position in its own KV
    cache; appends the new keys / values to each session and returns each row's last normed
    hidden state [B, d]."""
    from transformers import DynamicCache

    news = [torch.cat(s.pending) for s in states]
    for s in states:
        s.pending.clear()
    b, n_max = len(states), max(x.shape[0] for x in news)
    p_max = max(s.length for s in states)
    d = news[0].shape[-1]
    embeds = news[0].new_zeros(b, n_max, d)
    mask = torch.zeros(b, p_max + n_max, dtype=torch.long)
    positions = torch.zeros(b, n_max, dtype=torch.long)
    for row, (s, x) in enumerate(zip(states, news)):
        embeds[row, :x.shape[0]] = x
        mask[row, p_max - s.length:p_max] = 1
        mask[row, p_max:p_max + x.shape[0]] = 1
        positions[row] = s.length + torch.arange(n_max)
    cache = DynamicCache(config=llm.config)
    if p_max:
        layers = llm.num_layers
        for layer in range(layers):
            ref = next(s.kv for s in states if s.kv is not None)[layer][0]
            heads, head_dim = ref.shape[0], ref.shape[-1]
            keys = ref.new_zeros(b, heads, p_max, head_dim)
            values = ref.new_zeros(b, heads, p_max, head_dim)
            for row, s in enumerate(states):
                if s.kv is not None:
                    k, v = s.kv[layer]
                    keys[row, :, p_max - s.length:] = k
                    values[row, :, p_max - s.length:] = v
            cache.update(keys, values, layer)
    out = llm.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                      past_key_values=cache, use_cache=True)
    hidden = out.last_hidden_state
    result = []
    for row, (s, x) in enumerate(zip(states, news)):
        n = x.shape[0]
        new_kv = []
        for layer in range(llm.num_layers):
            k = cache.layers[layer].keys[row, :, p_max:p_max + n]
            v = cache.layers[layer].values[row, :, p_max:p_max + n]
            if s.kv is not None:
                k, v = torch.cat([s.kv[layer][0], k], dim=1), torch.cat([s.kv[layer][1], v], dim=1)
            new_kv.append((k.clone(), v.clone()))
        s.kv, s.length = new_kv, s.length + n
        result.append(hidden[row, n - 1])
    return torch.stack(result)


def _decode(llm: FrozenModel, loaded: LoadedSpeech, state: SessionState, hidden: torch.Tensor,
            events: list[dict[str, Any]]) -> None:
    """The answering session's next greedy token from the hidden state that predicts it."""
    response = state.response
    assert response is not None
    token = int(llm.lm.lm_head(hidden).argmax())
    if token in state.template.stop_ids:
        _finish(llm, loaded, state, events, "completed", None)
        return
    response.tokens.append(token)
    response.phrase_tokens.append(token)
    response.phrase_states.append(hidden)
    piece = llm.tokenizer.decode([token])
    if any(c in PUNCTUATION for c in piece) or len(response.phrase_tokens) >= loaded.cfg.phrase_tokens:
        _flush_phrase(llm, loaded, state, events)
    if len(response.tokens) >= response.max_tokens:
        _finish(llm, loaded, state, events, "incomplete", "max_output_tokens")
        return
    _queue_tokens(llm, state, [token])


def _flush_phrase(llm: FrozenModel, loaded: LoadedSpeech, state: SessionState, events: list[dict[str, Any]]) -> None:
    response = state.response
    assert response is not None
    if not response.phrase_tokens:
        return
    text = llm.tokenizer.decode(response.tokens, skip_special_tokens=True)
    delta, response.text = text[len(response.text):], text
    states = torch.stack(response.phrase_states)
    if state.trace is not None:
        state.trace.append(states)
    pcm = pcm16(loaded.model.speak(llm, states, delta)) if state.speak else b""
    events.append({"type": "audio", "pcm": pcm, "text": delta, "tokens": list(response.phrase_tokens)})
    response.phrase_tokens, response.phrase_states = [], []


def _finish(llm: FrozenModel, loaded: LoadedSpeech, state: SessionState, events: list[dict[str, Any]],
            status: str, reason: str | None, feed: bool = True) -> None:
    response = state.response
    assert response is not None
    if status != "cancelled":
        _flush_phrase(llm, loaded, state, events)
    transcript = llm.tokenizer.decode(response.tokens, skip_special_tokens=True)
    events.append({"type": "done", "status": status, "reason": reason, "transcript": transcript,
                   "tokens": list(response.tokens)})
    state.response = None
    state.pending.clear()
    if feed:
        _queue_tokens(llm, state, state.template.assistant_end)


# -- the FrozenRuntime's audio routes ---------------------------------------------------------------
@dataclass(frozen=True)
class TranscriptionItem:
    pcm: np.ndarray  # 16 kHz mono float32
    max_tokens: int
    instructions: str


@dataclass(frozen=True)
class SpeechItem:
    ids: list[int]  # the text's tokens, read teacher-forced as the assistant's turn


def prepare_call(backbone: Any, loaded: LoadedSpeech, request: Any) -> Any:
    """A TranscriptionCall (WAV / MP3 bytes) or a SpeechCall (text) -> a validated item (400s)."""
    from floe.adapters.audio.decode import load_pcm
    from floe.server.schemas.audio import SpeechCall, TranscriptionCall

    if isinstance(request, TranscriptionCall):
        pcm = load_pcm(request.data, request.format, "file", request.max_seconds)
        return TranscriptionItem(pcm, loaded.cfg.max_response_tokens, request.prompt or "")
    if isinstance(request, SpeechCall):
        ids = backbone.llm.tokenize(request.input)
        if not ids:
            raise InvalidRequest("`input` has no text to speak", param="input")
        limit = backbone.llm.config.max_position_embeddings // 2
        if len(ids) > limit:
            raise InvalidRequest(f"`input` is {len(ids)} tokens; at most {limit}", param="input")
        return SpeechItem(ids)
    raise InvalidRequest(f"the speech kind does not answer {type(request).__name__}", param="model")


def run_calls(backbone: Any, batch: list[tuple[LoadedSpeech, Any]]) -> list[Any]:
    """Transcriptions run as sessions of one turn, stepped together (one batched forward per token);
    speech is one batched teacher-forced forward, then the decoder and vocoder per phrase."""
    from floe.server.schemas.audio import SpeechResult, TranscriptionResult

    llm = backbone.llm
    results: list[Any] = [None] * len(batch)
    sessions = []
    for i, (loaded, item) in enumerate(batch):
        if isinstance(item, TranscriptionItem):
            state = open_session(llm, loaded, SessionConfig(instructions=item.instructions))
            state.speak = False
            sessions.append((i, loaded, state, [Audio(item.pcm), Commit(), Respond(item.max_tokens)]))
    with torch.no_grad():
        while sessions:
            out = step(llm, [(loaded, state, ops) for _, loaded, state, ops in sessions])
            still = []
            for (i, loaded, state, _), events in zip(sessions, out):
                done = [e for e in events if e["type"] == "done"]
                if done:
                    results[i] = TranscriptionResult(text=done[0]["transcript"].strip(),
                                                     tokens=len(done[0]["tokens"]))
                else:
                    still.append((i, loaded, state, []))
            sessions = still
        speech = [i for i, (_, item) in enumerate(batch) if isinstance(item, SpeechItem)]
        if speech:
            for i, pcm in zip(speech, speak_texts(llm, [(batch[i][0], batch[i][1].ids) for i in speech])):
                results[i] = SpeechResult(pcm=pcm16(pcm), sample_rate=batch[i][0].cfg.output_sample_rate)
    return results


def speak_texts(llm: FrozenModel, items: list[tuple[LoadedSpeech, list[int]]]) -> list[torch.Tensor]:
    """Text -> 24 kHz PCM: the LLM reads [opening, generation prompt, text] in one batched forward;
    the hidden state that predicts each text token drives the speech decoder, per phrase."""
    template = chat_template(llm, "")
    prompt = template.opening + template.to_assistant
    seqs = [prompt + ids for _, ids in items]
    batch = llm.pad_ids(seqs)
    hidden = llm.decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=False).last_hidden_state
    width = batch.input_ids.shape[1]
    out = []
    for row, ((loaded, ids), seq) in enumerate(zip(items, seqs)):
        start = width - len(seq) + len(prompt) - 1  # the position that predicts the first text token
        states = hidden[row, start:start + len(ids)]
        pcm = [loaded.model.speak(llm, states[a:b], llm.tokenizer.decode(ids[a:b], skip_special_tokens=True))
               for a, b in phrases(llm, ids, loaded.cfg.phrase_tokens)]
        out.append(torch.cat(pcm))
    return out


def phrases(llm: FrozenModel, ids: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """[start, end) spans of `ids`: a phrase ends at punctuation or after `max_tokens` tokens."""
    spans, start = [], 0
    for i, token in enumerate(ids):
        piece = llm.tokenizer.decode([token])
        if any(c in PUNCTUATION for c in piece) or i + 1 - start >= max_tokens:
            spans.append((start, i + 1))
            start = i + 1
    if start < len(ids):
        spans.append((start, len(ids)))
    return spans

"""A session's audio front end, in the session replica: 24 kHz PCM16 from the socket -> 16 kHz float
(soxr's streaming resampler, exact across chunk boundaries) -> turn detection.

`turn_detection: null`: every sample goes to the kind; the client commits.
`server_vad` (Silero VAD, package `silero-vad`, 512-sample windows at 16 kHz, a model per session,
since Silero keeps its recurrent state inside the model): audio before speech is held in a ring of
`prefix_padding_ms`; when speech starts, the ring and what follows go to the kind (and, with
`interrupt_response`, an answer in progress is cancelled: barge-in); after `silence_duration_ms`
of silence the turn is committed (and answered, with `create_response`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

SOCKET_RATE = 24_000
MODEL_RATE = 16_000
VAD_WINDOW = 512

_vad_lock = threading.Lock()


def load_vad() -> Any:
    """A fresh Silero VAD model (JIT, shipped in the wheel)."""
    import torch

    with _vad_lock:
        threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad  # NOTE: importing it sets torch's threads to 1

            return load_silero_vad()
        finally:
            torch.set_num_threads(threads)


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True


class Frontend:
    def __init__(self, turn_detection: TurnDetection | None) -> None:
        import soxr

        self._resampler = soxr.ResampleStream(SOCKET_RATE, MODEL_RATE, 1, dtype="float32")
        self._rest = np.zeros(0, dtype=np.float32)  # samples short of a VAD window
        self._vad: Any = None
        self._model: Any = None
        self.heard = 0  # 16 kHz samples received this session
        self.configure(turn_detection)

    def flush(self) -> list[Any]:
        """A manual commit: the resampler's tail (its filter delay) belongs to the committed audio;
        the next turn starts a fresh stream."""
        import soxr

        from floe.adapters.speech.session import Audio

        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._resampler = soxr.ResampleStream(SOCKET_RATE, MODEL_RATE, 1, dtype="float32")
        self.heard += len(tail)
        return [Audio(tail)] if len(tail) and self._vad is None else []

    def reset(self) -> None:
        """input_audio_buffer.clear: drop what the resampler and the VAD hold."""
        import soxr

        self._resampler = soxr.ResampleStream(SOCKET_RATE, MODEL_RATE, 1, dtype="float32")
        self._rest = np.zeros(0, dtype=np.float32)
        self.configure(self.turn_detection)

    def configure(self, turn_detection: TurnDetection | None) -> None:
        self.turn_detection = turn_detection
        self._ring: deque[np.ndarray] = deque()
        self._ring_samples = 0
        self._speaking = False
        if turn_detection is None:
            self._vad = None
            return
        from silero_vad import VADIterator

        if self._model is None:
            self._model = load_vad()
        self._vad = VADIterator(self._model, threshold=turn_detection.threshold, sampling_rate=MODEL_RATE,
                                min_silence_duration_ms=turn_detection.silence_duration_ms, speech_pad_ms=0)

    def push(self, pcm16: bytes) -> tuple[list[Any], list[dict[str, Any]]]:
        """PCM16 24 kHz bytes -> (ops for the kind, events for the client)."""
        from floe.adapters.speech.session import Audio

        x = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        y = self._resampler.resample_chunk(x)
        if self._vad is None:
            self.heard += len(y)
            return ([Audio(y)] if len(y) else []), []
        return self._detect(np.concatenate([self._rest, y]))

    def _detect(self, audio: np.ndarray) -> tuple[list[Any], list[dict[str, Any]]]:
        import torch

        from floe.adapters.speech.session import Audio, Cancel, Commit, Respond

        td = self.turn_detection
        assert td is not None
        ops: list[Any] = []
        events: list[dict[str, Any]] = []
        n = len(audio) // VAD_WINDOW * VAD_WINDOW
        self._rest = audio[n:]
        for start in range(0, n, VAD_WINDOW):
            window = audio[start:start + VAD_WINDOW]
            self.heard += VAD_WINDOW
            with torch.no_grad():
                found = self._vad(torch.from_numpy(window.copy()))
            if self._speaking:
                ops.append(Audio(window))
            else:
                self._ring.append(window)
                self._ring_samples += VAD_WINDOW
                keep = td.prefix_padding_ms * MODEL_RATE // 1000 + VAD_WINDOW
                while self._ring_samples - len(self._ring[0]) >= keep:
                    self._ring_samples -= len(self._ring.popleft())
            if found and "start" in found and not self._speaking:
                self._speaking = True
                held = np.concatenate(list(self._ring))
                self._ring.clear()
                self._ring_samples = 0
                start_ms = max(0, (self.heard - len(held))) * 1000 // MODEL_RATE
                if td.interrupt_response:
                    ops.append(Cancel())
                ops.append(Audio(held))
                events.append({"type": "speech_started", "audio_start_ms": int(start_ms)})
            elif found and "end" in found and self._speaking:
                self._speaking = False
                events.append({"type": "speech_stopped", "audio_end_ms": int(self.heard * 1000 // MODEL_RATE)})
                ops.append(Commit())
                events.append({"type": "committed"})
                if td.create_response:
                    ops.append(Respond())
        return ops, events

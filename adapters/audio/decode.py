"""Audio bytes -> 16 kHz mono float samples -> 80-bin Kaldi fbank frames (numpy; no torch).

    WAV (PCM 8/16/24/32-bit, float, extensible) and MP3: miniaudio (dr_wav / dr_mp3), no
    torchaudio or ffmpeg; the duration is read from the header before anything is decoded.
    channels -> mean (downmix) -> scipy.signal.resample_poly to 16 kHz (exact rational ratio).
    fbank: kaldi-native-fbank, Kaldi's defaults but 80 mel bins, 25 ms window, 10 ms shift,
    dither 0 (deterministic), povey window, snip_edges; samples in int16 scale (x * 32768), as
    Kaldi reads PCM.

Every refusal is a 400 naming the part (`param`): `unsupported_audio_format`, `invalid_audio`,
`audio_too_long`.
"""

from __future__ import annotations

from math import gcd

import numpy as np

from floe.adapters.audio import FORMATS, SAMPLE_RATE
from floe.server.errors import InvalidRequest

FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
MIN_SAMPLES = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # one fbank frame


def check_format(fmt: object, param: str) -> str:
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise InvalidRequest(f"{param}: audio format {fmt!r} is not supported; send one of {list(FORMATS)}",
                             param=param, code="unsupported_audio_format")
    return fmt.lower()


def decode(data: bytes, fmt: str, param: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """(samples [frames, channels] float32 in [-1, 1], sample rate) of WAV or MP3 bytes."""
    import miniaudio

    get_info, read = ((miniaudio.wav_get_info, miniaudio.wav_read_f32) if fmt == "wav"
                      else (miniaudio.mp3_get_info, miniaudio.mp3_read_f32))
    try:
        info = get_info(data)
        if info.sample_rate <= 0 or info.nchannels <= 0:
            raise miniaudio.DecodeError("no sample rate or channels")
        seconds = info.num_frames / info.sample_rate
        if seconds > max_seconds:
            raise InvalidRequest(f"{param}: the clip is {seconds:.1f} s long; at most {max_seconds:g} s "
                                 "(media.max_audio_s)", param=param, code="audio_too_long")
        sound = read(data)
    except InvalidRequest:
        raise
    except (miniaudio.MiniaudioError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest(f"{param}: the audio could not be decoded as {fmt}", param=param,
                             code="invalid_audio") from exc
    samples = np.frombuffer(sound.samples, dtype=np.float32).reshape(-1, sound.nchannels)
    if samples.shape[0] / sound.sample_rate > max_seconds:  # a header that understated the length
        raise InvalidRequest(f"{param}: the clip is longer than {max_seconds:g} s (media.max_audio_s)",
                             param=param, code="audio_too_long")
    if not np.isfinite(samples).all():
        raise InvalidRequest(f"{param}: the audio has NaN or infinite samples", param=param,
                             code="invalid_audio")
    return samples, int(sound.sample_rate)


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Downmix (mean of the channels) and resample to 16 kHz: float32 [n]."""
    from scipy.signal import resample_poly

    mono = samples.mean(axis=1, dtype=np.float64) if samples.ndim == 2 else samples.astype(np.float64)
    if rate != SAMPLE_RATE:
        g = gcd(SAMPLE_RATE, rate)
        mono = resample_poly(mono, SAMPLE_RATE // g, rate // g)
    return np.asarray(mono, dtype=np.float32)


def load_pcm(data: bytes, fmt: str, param: str, max_seconds: float) -> np.ndarray:
    """WAV / MP3 bytes -> 16 kHz mono float32 samples (400 on anything unusable)."""
    pcm = to_mono_16k(*decode(data, check_format(fmt, param), param, max_seconds))
    if pcm.shape[0] < MIN_SAMPLES:
        raise InvalidRequest(f"{param}: the clip is shorter than one {FRAME_LENGTH_MS:g} ms frame",
                             param=param, code="invalid_audio")
    return pcm


def fbank_options(num_mel_bins: int = 80):
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(SAMPLE_RATE)
    opts.frame_opts.frame_length_ms = FRAME_LENGTH_MS
    opts.frame_opts.frame_shift_ms = FRAME_SHIFT_MS
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = num_mel_bins
    return opts


def fbank(pcm: np.ndarray, num_mel_bins: int = 80) -> np.ndarray:
    """Log-mel filterbank frames [T, num_mel_bins] float32 of 16 kHz samples in [-1, 1]."""
    import kaldi_native_fbank as knf

    computer = knf.OnlineFbank(fbank_options(num_mel_bins))
    computer.accept_waveform(float(SAMPLE_RATE), (np.asarray(pcm, dtype=np.float32) * 32768.0).tolist())
    computer.input_finished()
    frames = [computer.get_frame(i) for i in range(computer.num_frames_ready)]
    return np.asarray(frames, dtype=np.float32).reshape(-1, num_mel_bins)


def wav_bytes(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono PCM WAV of float samples in [-1, 1] (stdlib `wave`; tests, docs, the demo)."""
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
    return buf.getvalue()

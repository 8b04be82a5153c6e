"""The audio demo adapter: a dozen words spoken by espeak-ng, transcribed by the frozen LLM.

    data      12 words (colours and numbers), each spoken by espeak-ng (Debian package `espeak-ng`)
              with 6 voices x 3 speeds (pitch cycling 35 / 50 / 65) for training, and by 3 other
              voices at 2 other speeds for the held-out test (voices and speeds never trained on)
    chat      user: [input_audio (WAV, 22.05 kHz as espeak writes it), instruction text or none]
              assistant: the word
    stage 1   the demo's own small encoder (no pretrained audio encoder can be downloaded here) is
              trained on the training clips by word classification (mean-pooled states -> linear),
              then frozen; the manifest says so
    stage 2   `train.train_aligner`: the Q-Former, projection and indicator, through the frozen
              built-in LLM, on the target turn's tokens (as `floe adapters train audio` does)
    report    held-out exact-match accuracy of greedy transformers `generate`, next to chance (1/12),
              in the manifest's `demo` field

Deterministic (seeded, one torch thread, espeak-ng output is deterministic) and within about
90 s of one CPU thread on `floe-tiny-chat`.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.nn import functional as F

from floe.adapters.audio import AudioConfig
from floe.server.training import descend

WORDS = ("red", "green", "blue", "yellow", "black", "white", "one", "two", "three", "four", "five", "six")
TRAIN_VOICES = ("en-us+m1", "en-us+f2", "en-gb+m3", "en-gb+f4", "en-029+m2", "en-gb-x-rp+f1")
TRAIN_SPEEDS = (120, 160, 200)
HELD_OUT_VOICES = ("en-gb-scotland+m4", "en-us-nyc+f3", "en-gb-x-gbclan+m6")
HELD_OUT_SPEEDS = (140, 180)
PITCHES = (35, 50, 65)
INSTRUCTIONS = ("What word is spoken?", "Transcribe the audio.", "", "Which word do you hear?")
SEED = 0


def demo_config(llm_hidden: int) -> AudioConfig:
    # NOTE: 8 queries (the published APT config has 32) keep stage 2 within the CPU budget.
    return AudioConfig(encoder_dim=96, encoder_layers=2, encoder_heads=4, qformer_dim=96, qformer_layers=2,
                       qformer_heads=4, num_queries=8, max_text_tokens=16, llm_hidden=llm_hidden)


def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("the audio demo needs espeak-ng (Debian/Ubuntu: apt-get install espeak-ng)")
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def speak(text: str, voice: str, speed: int, pitch: int, tmp: Path) -> bytes:
    """WAV bytes of espeak-ng saying `text`."""
    path = tmp / f"{voice}-{speed}-{pitch}-{text}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)
    return path.read_bytes()


def variants(voices: tuple[str, ...], speeds: tuple[int, ...]) -> list[tuple[str, int, int]]:
    out = []
    for v, voice in enumerate(voices):
        for s, speed in enumerate(speeds):
            out.append((voice, speed, PITCHES[(v + s) % len(PITCHES)]))
    return out


def synthesize(specs: list[tuple[str, str, int, int]]) -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda s: speak(*s, Path(tmp)), specs))


def conversation(wav: bytes, word: str, instruction: str) -> list[dict]:
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
    content = [audio] + ([{"type": "text", "text": instruction}] if instruction else [])
    return [{"role": "user", "content": content}, {"role": "assistant", "content": word}]


def train_encoder(model, clips: list[torch.Tensor], labels: list[int], epochs: int = 20,
                  batch_size: int = 32) -> float:
    """Stage 1: the encoder learns the words (mean-pooled states -> linear), then it is frozen."""
    from floe.adapters.audio.train import pad

    encoder = model.encoder.requires_grad_(True).train()
    head = torch.nn.Linear(model.cfg.encoder_dim, len(WORDS))
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=2e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(SEED)
    y = torch.tensor(labels)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        order = torch.randperm(len(clips), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size].tolist()
            feats, mask = pad([clips[j] for j in idx])
            states, smask = encoder(feats, mask.sum(1))
            pooled = (states * smask[..., None]).sum(1) / smask.sum(1, keepdim=True)
            loss = F.cross_entropy(head(pooled), y[idx])
            last = descend(opt, loss)
    encoder.eval().requires_grad_(False)
    return last


def build(base_dir: Path, out: Path) -> Path:
    """Build the demo adapter for the base in `base_dir` into `out` (deterministic)."""
    from floe.adapters.audio.decode import fbank, load_pcm
    from floe.adapters.audio.evaluate import calibrated_predictions, candidate_scores, greedy, target_tokens
    from floe.adapters.audio.model import AudioModel, EmbeddingRows, init_output_scale, llm_width, save
    from floe.adapters.audio.train import Preparer, TrainConfig, load_llm, train_aligner
    from floe.server.runtime.model import base_fingerprint

    version = espeak_version()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            train_specs = [(w, *v) for v in variants(TRAIN_VOICES, TRAIN_SPEEDS) for w in WORDS]
            test_specs = [(w, *v) for v in variants(HELD_OUT_VOICES, HELD_OUT_SPEEDS) for w in WORDS]
            wavs = synthesize(train_specs + test_specs)
            train_wavs, test_wavs = wavs[:len(train_specs)], wavs[len(train_specs):]

            llm, table = load_llm(base_dir)
            model = AudioModel(demo_config(llm_width(base_dir)))
            init_output_scale(model.aligner, EmbeddingRows(base_dir).rms())
            feats = [torch.from_numpy(fbank(load_pcm(w, "wav", "demo", 60.0))) for w in train_wavs]
            enc_loss = train_encoder(model, feats, [WORDS.index(s[0]) for s in train_specs])

            prep = Preparer(base_dir, model)
            pick = random.Random(SEED)  # the instruction says nothing about the word
            train = [prep(conversation(w, s[0], pick.choice(INSTRUCTIONS))) for w, s in zip(train_wavs, train_specs)]
            test = [prep(conversation(w, s[0], pick.choice(INSTRUCTIONS))) for w, s in zip(test_wavs, test_specs)]
            n_val = len(train) // 10
            order = torch.randperm(len(train)).tolist()
            val, train = [train[i] for i in order[:n_val]], [train[i] for i in order[n_val:]]
            untrained = copy.deepcopy(model.aligner)
            report = train_aligner(llm, model, table, prep.pid, train, val,
                                   TrainConfig(epochs=14, batch_size=16, lr=3e-3, seed=SEED))
            hits = [greedy(llm, model, table, prep.pid, ex, prep.eos) == target_tokens(ex, prep.eos) for ex in test]
            # closed-set ranking, calibrated by the mean scores over some training prompts
            candidates = [[t for t in prep(conversation(train_wavs[0], w, "")).labels if t != -100] for w in WORDS]
            score = lambda exs: torch.stack([candidate_scores(llm, model, table, prep.pid, ex, candidates)  # noqa: E731
                                             for ex in exs])
            ranked = [WORDS[int(k)] == s[0] for k, s in
                      zip(calibrated_predictions(score(test), score(train[::8])), test_specs)]
            model.aligner, trained = untrained, model.aligner  # control: the aligner before stage 2
            control = [WORDS[int(k)] == s[0] for k, s in
                       zip(calibrated_predictions(score(test), score(train[::8])), test_specs)]
            model.aligner = trained
    finally:
        torch.set_num_threads(threads)
    demo = {"words": list(WORDS), "train_voices": list(TRAIN_VOICES), "train_speeds": list(TRAIN_SPEEDS),
            "held_out_voices": list(HELD_OUT_VOICES), "held_out_speeds": list(HELD_OUT_SPEEDS),
            "instructions": list(INSTRUCTIONS), "espeak_ng": version, "held_out_clips": len(hits),
            "chance": 1 / len(WORDS),
            "held_out_accuracy": sum(hits) / len(hits),  # the greedy answer is the word, exactly
            "held_out_ranked_accuracy": sum(ranked) / len(ranked),  # calibrated closed-set ranking
            "held_out_ranked_accuracy_untrained_aligner": sum(control) / len(control),
            "metrics": {"held_out_accuracy": "exact match of the greedy answer with the spoken word",
                        "held_out_ranked_accuracy": "argmax over the 12 words of log p(word | prompt) minus "
                        "its mean over 1/8 of the training prompts (contextual calibration)"}}
    encoder = {"weights": "trained by the demo builder on its espeak-ng training clips (word classification, "
                          "mean-pooled states -> linear), then frozen; no pretrained audio encoder is available",
               "trained": True, "final_train_loss": enc_loss}
    save(out, model, base_fingerprint(base_dir), extra={"encoder": encoder, "training": report, "demo": demo})
    return Path(out)


def report(directory: Path) -> dict:
    """The demo's held-out report, from its manifest."""
    return json.loads((Path(directory) / "floe_adapter.json").read_text())["demo"]

"""The speech demo adapter of the default `floe serve`: `demo-speech`, so a fresh serve holds
realtime sessions.

It is seeded and random (not trained): the encoder, adapter and speech decoder are drawn from
seed 0, with the audio embeddings scaled to the base's own embedding RMS. Training them through
the frozen LLM so that the spoken answer relates to the question would need a speech corpus
(questions and spoken answers) and far more than the minute of one CPU core a demo may take;
the demo shows the protocol, the batching and the audio path, and its answers are the tiny
base's greedy text for embeddings it was never trained on, spoken through Griffin-Lim. The
manifest's `demo` field says so.
"""

from __future__ import annotations

from pathlib import Path

from floe.adapters.speech import SpeechConfig

SEED = 0


def demo_config(llm_hidden: int) -> SpeechConfig:
    # NOTE: 8 Griffin-Lim iterations and 24-token answers keep the demo's turns quick on a CPU.
    return SpeechConfig(llm_hidden=llm_hidden, griffin_lim_iters=8, max_response_tokens=24)


def build(base_dir: Path, out: Path) -> Path:
    from floe.adapters.speech.model import llm_width, write

    demo = {"trained": False, "seed": SEED,
            "note": "seeded random encoder, adapter and speech decoder: the protocol and audio path work, "
                    "the answers are not about the question"}
    return write(Path(out), base_dir, seed=SEED, cfg=demo_config(llm_width(base_dir)), extra={"demo": demo})

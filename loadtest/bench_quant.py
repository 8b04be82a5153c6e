"""Quantization / pruning benchmark on floe's reference LM (trained here on first use).

One table: method | weight MiB | held-out perplexity | ratio to dense | decode tokens/s.
Perplexity: non-overlapping 128-token windows of the held-out split (never trained on).
Decode: transformers greedy generate, 64 new tokens, batch 1, one thread (bitsandbytes has no
vLLM CPU path, so every row uses the same engine). "sim" rows are simulated W/A quantization
(QLLM's own evaluation protocol); their runnable export is the "qllm (W8A8 export)" row.

    python loadtest/bench_quant.py [--quick] [--maskllm-steps 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

import floe.quant as fq
from floe.quant.calibration import token_batches
from floe.quant.evaluate import decode_tokens_per_s, perplexity, weight_mib
from floe.quant.methods.qllm import QLLMConfig, apply_qllm
from floe.quant.model_io import load_dense
from floe.quant.refmodel import HELDOUT_FILE, TEST_SPEC, RefModelSpec, build_reference_model, corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny test model, short schedules")
    ap.add_argument("--maskllm-steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="where outputs go (default: temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = TEST_SPEC if args.quick else RefModelSpec()
    src = build_reference_model(spec)
    work = args.work or Path(tempfile.mkdtemp(prefix="floe-bench-quant-"))
    held = (src / HELDOUT_FILE).read_text(encoding="utf-8")
    calib = [p for p in corpus(spec.max_chars)[0].split("\n\n") if p.strip()]
    seq = min(128, spec.seq_len)
    group = 128 if spec.hidden_size % 128 == 0 else 32
    dense, tok = load_dense(src)
    rows: list[tuple] = []
    ppl_of = lambda m: perplexity(m, tok, held, seq_len=seq)  # noqa: E731

    def measure(name: str, out_dir: Path | None, model=None, decode=True) -> float:
        model = model if model is not None else fq.load_for_transformers(out_dir)
        ppl = ppl_of(model)
        tps = decode_tokens_per_s(model, tok) if decode else float("nan")
        mib = weight_mib(out_dir) if out_dir is not None else float("nan")
        rows.append((name, mib, ppl, tps))
        print(f"  {name}: ppl {ppl:.2f}", flush=True)
        return ppl

    t0 = time.time()
    ppl = {"dense": measure("dense fp32", src, dense)}
    for m in ("int8", "nf4", "fp4"):
        ppl[m] = measure(f"{m} (bitsandbytes)", fq.quantize(src, m, out=work / m, overwrite=True))
    for bits in (4, 8):
        cfg = fq.make_config("gptq", bits=bits, group_size=group, seq_len=seq)
        out = fq.quantize(src, cfg, calibration=calib, out=work / f"gptq{bits}", overwrite=True)
        ppl[f"gptq{bits}"] = measure(f"gptq W{bits} ({fq.read_manifest(out).extra['scheme']})", out)
    out = fq.quantize(src, fq.make_config("rtn", bits=4, group_size=group), out=work / "rtn4", overwrite=True)
    ppl["rtn4"] = measure("rtn W4A16", out)

    ids = token_batches(tok, calib, seq, 32)
    lrc_steps = 20 if args.quick else 60
    for b in (4, 6):
        base = copy.deepcopy(dense)
        apply_qllm(base, ids, QLLMConfig(bits=b, act_bits=b, reassembly=False, rank=0, seq_len=seq))
        ppl[f"rtn_w{b}a{b}"] = measure(f"rtn W{b}A{b} (sim)", None, base, decode=False)
        q = copy.deepcopy(dense)
        apply_qllm(q, ids, QLLMConfig(bits=b, act_bits=b, seq_len=seq, lrc_steps=lrc_steps))
        ppl[f"qllm_w{b}a{b}"] = measure(f"qllm W{b}A{b} (sim)", None, q, decode=False)
    cfg = fq.make_config("qllm", bits=4, act_bits=4, seq_len=seq, lrc_steps=lrc_steps)
    out = fq.quantize(src, cfg, calibration=calib, out=work / "qllm", overwrite=True)
    ppl["qllm_export"] = measure("qllm W4 grid (W8A8 export)", out)

    for m in ("magnitude", "wanda"):
        out = fq.prune(src, m, calibration=calib, out=work / m, overwrite=True)
        ppl[m] = measure(f"{m} 2:4", out)
    cfg = fq.make_config("maskllm", "prune", steps=args.maskllm_steps, seq_len=seq)
    out = fq.prune(src, cfg, calibration=calib, out=work / "maskllm", overwrite=True)
    ppl["maskllm"] = measure("maskllm 2:4", out)
    cfg = fq.make_config("gptq", bits=4, group_size=group, seq_len=seq)
    out = fq.quantize(work / "maskllm", cfg, calibration=calib, out=work / "maskllm-gptq4", overwrite=True)
    measure("maskllm 2:4 + gptq W4A16", out)

    print(f"\nreference model: {src} ({spec.hidden_size}d x {spec.num_layers} layers, "
          f"vocab {spec.vocab_size}); held-out windows of {seq} tokens; {time.time() - t0:.0f}s\n")
    print("| method | weight MiB | held-out ppl | ratio to dense | decode tok/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, mib, p, tps in rows:
        mib_s = "-" if mib != mib else f"{mib:.2f}"
        tps_s = "-" if tps != tps else f"{tps:.0f}"
        print(f"| {name} | {mib_s} | {p:.2f} | {p / ppl['dense']:.3f} | {tps_s} |")
    print(f"maskllm_vs_magnitude_ppl={ppl['maskllm'] / ppl['magnitude']:.3f} "
          f"qllm_vs_rtn_w4a4_ppl={ppl['qllm_w4a4'] / ppl['rtn_w4a4']:.3f} "
          f"nf4_vs_dense_ppl={ppl['nf4'] / ppl['dense']:.3f}")


if __name__ == "__main__":
    main()

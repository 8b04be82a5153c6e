"""Quantization / pruning benchmark on floe's reference LM (trained here on first use, cached).

One table: method | weight MiB | held-out perplexity | ratio to dense | decode tokens/s.
Text (``floe.quant.refdata``): the LM trained on ``train``; GPTQ / QLLM / Wanda / SparseGPT
calibrate on ``calib``; MaskLLM learns on ``mask`` (validating on its own last windows);
perplexity is over non-overlapping 128-token windows of ``heldout`` -- four disjoint splits.
Decode: transformers greedy generate, 64 new tokens, batch 1, one thread (bitsandbytes has no
vLLM CPU path, so every row uses the same engine). "sim" rows are simulated W/A quantization
(QLLM's own evaluation protocol); their runnable export is the "qllm (W8A8 export)" row.
On a CUDA machine it also times 2:4 semi-structured matmuls against dense at 7B/8B shapes.

    python loadtest/bench_quant.py [--quick] [--maskllm-steps N] [--windows 256] [--work DIR]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path

import torch

import floe.quant as fq
from floe.quant.calibration import token_batches
from floe.quant.evaluate import decode_tokens_per_s, perplexity, weight_mib
from floe.quant.methods.qllm import QLLMConfig, apply_qllm
from floe.quant.model_io import load_dense
from floe.quant.refdata import splits
from floe.quant.refmodel import HELDOUT_FILE, TEST_SPEC, RefModelSpec, build_reference_model, read_info


def sparse_matmul_speed() -> None:
    """2:4 ``to_sparse_semi_structured`` vs dense fp16 at Llama-7B/8B linear shapes (GPU only)."""
    if not torch.cuda.is_available():
        print("2:4 sparse matmul speed: skipped (no CUDA device here)")
        return
    from torch.sparse import to_sparse_semi_structured

    print("\n| weight [out, in] | tokens | dense ms | 2:4 ms | speed-up |\n| --- | ---: | ---: | ---: | ---: |")
    for out_f, in_f in ((4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336)):
        for tokens in (16, 4096):
            w = torch.randn(out_f, in_f, dtype=torch.float16, device="cuda")
            w = w * torch.tensor([1, 1, 0, 0], dtype=w.dtype, device="cuda").repeat(out_f, in_f // 4)
            x = torch.randn(in_f, tokens, dtype=torch.float16, device="cuda")
            ws = to_sparse_semi_structured(w)
            times = []
            for fn in (lambda w=w, x=x: w @ x, lambda ws=ws, x=x: ws @ x):
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(50):
                    fn()
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) / 50 * 1e3)
            print(f"| [{out_f}, {in_f}] | {tokens} | {times[0]:.3f} | {times[1]:.3f} | {times[0] / times[1]:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny test model, short schedules")
    ap.add_argument("--maskllm-steps", type=int, default=None, help="default: the config's")
    ap.add_argument("--windows", type=int, default=256, help="held-out windows of 128 tokens")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="where outputs go (default: temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="MatMul8bitLt")  # bitsandbytes, once per forward
    spec = TEST_SPEC if args.quick else RefModelSpec()
    src = build_reference_model(spec)
    info = read_info(src)
    work = args.work or Path(tempfile.mkdtemp(prefix="floe-bench-quant-"))
    data = splits(spec.max_chars)
    held = (src / HELDOUT_FILE).read_text(encoding="utf-8")
    calib, mask_text = data.calib, data.mask
    seq = min(128, spec.seq_len)
    group = 128 if spec.hidden_size % 128 == 0 else 64 if spec.hidden_size % 64 == 0 else 32
    dense, tok = load_dense(src)
    rows: list[tuple] = []
    ppl_of = lambda m: perplexity(m, tok, held, seq_len=seq, max_windows=args.windows)  # noqa: E731

    def measure(name: str, out_dir: Path | None, model=None, decode=True) -> float:
        model = model if model is not None else fq.load_for_transformers(out_dir)
        ppl = ppl_of(model)
        tps = decode_tokens_per_s(model, tok) if decode else float("nan")
        mib = weight_mib(out_dir) if out_dir is not None else float("nan")
        rows.append((name, mib, ppl, tps))
        print(f"  {name}: ppl {ppl:.2f} ({time.time() - t0:.0f}s)", flush=True)
        return ppl

    t0, c0 = time.time(), time.process_time()
    ppl = {"dense": measure("dense fp32", src, dense)}
    for m in ("int8", "nf4", "fp4"):
        ppl[m] = measure(f"{m} (bitsandbytes)", fq.quantize(src, m, out=work / m, overwrite=True))
    for bits in (4, 8):
        cfg = fq.make_config("gptq", bits=bits, group_size=group, seq_len=seq)
        out = fq.quantize(src, cfg, calibration=calib, out=work / f"gptq{bits}", overwrite=True)
        ppl[f"gptq{bits}"] = measure(f"gptq W{bits} ({fq.read_manifest(out).extra['scheme']})", out)
    out = fq.quantize(src, fq.make_config("rtn", bits=4, group_size=group), out=work / "rtn4", overwrite=True)
    ppl["rtn4"] = measure(f"rtn W4A16 (g{group})", out)

    ids = token_batches(tok, calib, seq, 32)
    lrc_steps = 20 if args.quick else 60
    for b in (8, 6, 4):
        base = copy.deepcopy(dense)
        apply_qllm(base, ids, QLLMConfig(bits=b, act_bits=b, reassembly=False, rank=0, seq_len=seq))
        ppl[f"rtn_w{b}a{b}"] = measure(f"rtn W{b}A{b} (sim)", None, base, decode=False)
        if b == 8:
            continue
        q = copy.deepcopy(dense)
        apply_qllm(q, ids, QLLMConfig(bits=b, act_bits=b, seq_len=seq, lrc_steps=lrc_steps))
        ppl[f"qllm_w{b}a{b}"] = measure(f"qllm W{b}A{b} (sim)", None, q, decode=False)
    cfg = fq.make_config("qllm", bits=4, act_bits=4, seq_len=seq, lrc_steps=lrc_steps)
    out = fq.quantize(src, cfg, calibration=calib, out=work / "qllm", overwrite=True)
    ppl["qllm_export"] = measure("qllm W4 grid (W8A8 export)", out)

    for m in ("magnitude", "wanda", "sparsegpt"):
        out = fq.prune(src, fq.make_config(m, "prune", **({} if m == "magnitude" else {"seq_len": seq})),
                       calibration=calib, out=work / m, overwrite=True)
        ppl[m] = measure(f"{m} 2:4" + (" (OBS update)" if m == "sparsegpt" else ""), out)
    cfg = fq.make_config("maskllm", "prune", steps=args.maskllm_steps, seq_len=seq)
    out = fq.prune(src, cfg, calibration=mask_text, out=work / "maskllm", overwrite=True)
    stats = fq.read_manifest(out).extra["maskllm"]
    ppl["maskllm"] = measure(f"maskllm 2:4 (prior {stats['prior']}, {stats['best_step']}/"
                             f"{stats['steps_run']} steps)", out)
    # the mask is an artefact: re-applied to the base it gives the same model, then quantized
    again = fq.prune(src, fq.make_config("mask", "prune", path=str(out)), out=work / "maskllm-again",
                     overwrite=True)
    same = all(torch.equal(a, b) for a, b in zip(fq.load_for_transformers(again).state_dict().values(),
                                                 fq.load_for_transformers(out).state_dict().values()))
    cfg = fq.make_config("gptq", bits=4, group_size=group, seq_len=seq)
    q_out = fq.quantize(again, cfg, calibration=calib, out=work / "maskllm-gptq4", overwrite=True)
    measure(f"maskllm 2:4 + gptq W4A16 (g{group})", q_out)
    wall, cpu = time.time() - t0, time.process_time() - c0

    s = info["spec"]
    print(f"\nreference model: {src}\n  Llama {s['hidden_size']}d x {s['num_layers']} layers, "
          f"{info['params'] / 1e6:.2f}M params ({info['decoder_params'] / 1e6:.2f}M in decoder linears "
          f"and norms), vocab {s['vocab_size']}; trained on {info['tokens_seen'] / 1e6:.1f}M tokens "
          f"({info['train_tokens'] / 1e6:.2f}M-token train split of CPython docs + stdlib source), "
          f"built in {info['build_seconds']:.0f}s; held-out: {min(args.windows, len(tok(held)['input_ids']) // seq)} "
          f"windows of {seq} tokens")
    print(f"  maskllm: {stats['seconds']:.0f}s, prior val losses {stats['prior_val_losses']}, val loss "
          f"{stats['val_loss_prior']} -> {stats['val_loss_final']}, {len(stats['linears_kept_prior'])} "
          f"linears kept their prior, {100 * stats['groups_changed_from_prior']:.1f}% of groups changed")
    print(f"  mask file re-applied to the base: {'identical weights' if same else 'DIFFERENT weights'}")
    print(f"  bench: {wall:.0f}s wall, {cpu:.0f}s CPU ({args.threads} thread)\n")
    print("| method | weight MiB | held-out ppl | ratio to dense | decode tok/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, mib, p, tps in rows:
        mib_s = "-" if mib != mib else f"{mib:.2f}"
        tps_s = "-" if tps != tps else f"{tps:.0f}"
        print(f"| {name} | {mib_s} | {p:.2f} | {p / ppl['dense']:.3f} | {tps_s} |")
    sparse_matmul_speed()
    best_oneshot = min(ppl["magnitude"], ppl["wanda"], ppl["sparsegpt"])
    gap = ppl["magnitude"] - ppl["dense"]
    print(f"\nmaskllm_vs_magnitude_ppl={ppl['maskllm'] / ppl['magnitude']:.3f} "
          f"maskllm_gap_closed={(ppl['magnitude'] - ppl['maskllm']) / gap if gap > 0 else float('nan'):.3f} "
          f"maskllm_vs_best_oneshot_ppl={ppl['maskllm'] / best_oneshot:.3f} "
          f"magnitude_vs_dense_ppl={ppl['magnitude'] / ppl['dense']:.3f} "
          f"qllm_vs_rtn_w4a4_ppl={ppl['qllm_w4a4'] / ppl['rtn_w4a4']:.3f} "
          f"rtn_w4a4_vs_w8a8_ppl={ppl['rtn_w4a4'] / ppl['rtn_w8a8']:.3f} "
          f"nf4_vs_dense_ppl={ppl['nf4'] / ppl['dense']:.3f}")


if __name__ == "__main__":
    main()

"""Run in a subprocess by the tests: load a floe.quant output in vLLM (CPU) with the manifest's
load kwargs, print JSON {ppl, tokens} (held-out perplexity via prompt logprobs, greedy tokens)."""

import json
import math
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main(out_dir: str, text_file: str, seq_len: int, windows: int) -> None:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs = json.load(open(os.path.join(out_dir, "floe_quant.json")))["load_kwargs"]
    tok = AutoTokenizer.from_pretrained(out_dir)
    ids = tok(open(text_file, encoding="utf-8").read())["input_ids"]
    chunks = [ids[i * seq_len:(i + 1) * seq_len] for i in range(min(windows, len(ids) // seq_len))]
    llm = LLM(model=out_dir, enforce_eager=True, kv_cache_memory_bytes=64 * 2**20, seed=0, **kwargs)
    try:
        outs = llm.generate([TokensPrompt(prompt_token_ids=c) for c in chunks],
                            SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0))
        nll, n = 0.0, 0
        for c, o in zip(chunks, outs):
            for tid, lp in zip(c[1:], o.prompt_logprobs[1:]):
                nll -= lp[tid].logprob
                n += 1
        prompt = tok("The for statement")["input_ids"]
        gen = llm.generate([TokensPrompt(prompt_token_ids=prompt)],
                           SamplingParams(max_tokens=8, min_tokens=8, temperature=0))
        print("RESULT " + json.dumps({"ppl": math.exp(nll / n), "tokens": list(gen[0].outputs[0].token_ids)}))
    finally:
        engine = getattr(llm.llm_engine, "engine_core", None)
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

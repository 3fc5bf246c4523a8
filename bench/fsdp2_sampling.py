"""Sampling under FSDP2: decode with the layers sharded (every step all-gathers each layer) or with
every unit gathered once for the whole decode (what the trainer does, ``Engine.whole_parameters``).

A model of SmolLM2-135M's shape, random weights, wrapped and sharded exactly as in training
(``PolicyScorer`` under ``fully_shard``, one unit per decoder layer). Each process decodes the same
batch greedily; both ways must give the tokens of the unsharded model.

    OMP_NUM_THREADS=1 accelerate launch --config_file recipes/accelerate/fsdp2_cpu.yaml bench/fsdp2_sampling.py
"""

from __future__ import annotations

import copy
import time

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from hybridrft.train.engines import Engine, build_accelerator, fsdp_units
from hybridrft.train.scoring import PolicyScorer

TOKENS, ROWS, PROMPT = 32, 8, 64


@torch.no_grad()
def greedy(model, prompt: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=prompt, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    tokens = [token]
    for _ in range(TOKENS - 1):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        tokens.append(token)
    return torch.cat(tokens, 1)


def timed(fn):
    dist.barrier()
    start = time.perf_counter()
    result = fn()
    dist.barrier()
    return result, time.perf_counter() - start


def main() -> None:
    accelerator = build_accelerator(log_with=None, project_dir=".")
    engine = Engine(accelerator)
    assert engine.fsdp2, "launch with --config_file recipes/accelerate/fsdp2_cpu.yaml"
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
    policy = LlamaForCausalLM(config)
    plain = copy.deepcopy(policy).eval()
    scorer = PolicyScorer(policy, shared_prompt_forward=False, chunk_size=1024, temperature=1.0)
    model, _ = accelerator.prepare(scorer, torch.optim.AdamW(scorer.parameters(), lr=1e-5))
    inner = accelerator.unwrap_model(model).policy
    prompt = torch.randint(0, config.vocab_size, (ROWS, PROMPT), generator=torch.Generator().manual_seed(1))
    expected, plain_s = timed(lambda: greedy(plain, prompt))

    def layer_by_layer():  # the root's own weights (embeddings, norm) gathered; each layer per forward
        model._get_fsdp_state()._lazy_init()
        model.set_reshard_after_forward(False, recurse=False)
        model.unshard()
        try:
            return greedy(inner, prompt)
        finally:
            model.reshard()
            model.set_reshard_after_forward(True, recurse=False)

    def gathered_once():
        with engine.whole_parameters(model):
            return greedy(inner, prompt)

    rows = [("unsharded model (reference)", expected, plain_s)]
    for name, fn in (("sharded, layers gathered per step", layer_by_layer), ("every unit gathered once", gathered_once)):
        fn()  # warm-up
        tokens, seconds = timed(fn)
        rows.append((name, tokens, seconds))
    if accelerator.is_main_process:
        print(f"{accelerator.num_processes} processes, {len(fsdp_units(model))} FSDP units, "
              f"{ROWS} rows x {TOKENS} tokens after a {PROMPT}-token prompt")
        for name, tokens, seconds in rows:
            print(f"| {name} | {seconds * 1000:.0f} ms | {ROWS * TOKENS / seconds:.0f} tok/s | "
                  f"same tokens: {torch.equal(tokens, expected)} |")


if __name__ == "__main__":
    main()

"""FrozenModel equals a plain transformers run: hidden states (pre / post norm), attentions."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from floe.server.errors import InvalidRequest


@pytest.fixture(scope="module")
def plain(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32,
                                                attn_implementation="eager").eval()


IDS = [[11, 42, 7, 300, 99, 5], [64, 3, 18]]


@torch.no_grad()
def test_hidden_states_every_layer_match_transformers(llm, plain):
    batch = llm.pad_ids(IDS)
    layers = tuple(range(llm.num_layers + 1))
    pre = llm.hidden_states(batch, layers, final_norm=False)
    post = llm.hidden_states(batch, layers, final_norm=True)
    for row, ids in enumerate(IDS):
        ref = plain.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        n = len(ids)
        for k in range(llm.num_layers):  # transformers: [k] = after k layers, un-normed
            torch.testing.assert_close(pre[k][row, -n:], ref.hidden_states[k][0], atol=1e-5, rtol=1e-5)
        # transformers' last entry is after the final norm, as is last_hidden_state
        torch.testing.assert_close(post[-1][row, -n:], ref.last_hidden_state[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain.model.norm(pre[-1][row, -n:]), ref.last_hidden_state[0],
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(pre[-1][row, -n:], post[-1][row, -n:])


@torch.no_grad()
def test_inputs_embeds_forward_equals_input_ids(llm):
    ids = llm.pad_ids(IDS)
    embeds = llm.pad_embeds([llm.embed(torch.tensor(s)) for s in IDS])
    for a, b in zip(llm.hidden_states(ids, (-1, -2)), llm.hidden_states(embeds, (-1, -2))):
        torch.testing.assert_close(a * ids.attention_mask[..., None], b * ids.attention_mask[..., None])


@torch.no_grad()
def test_attentions_match_transformers(llm, plain):
    ids = IDS[0]
    batch = llm.pad_ids([ids])
    got = llm.attentions(batch, layers=(1, 2), query_positions=[3, 5], key_span=(1, 4))
    ref = plain.model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    want = torch.stack([ref[0], ref[1]], dim=1)[:, :, :, [3, 5], 1:4]
    assert got.shape == (1, 2, plain.config.num_attention_heads, 2, 3)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_bad_layer_and_span(llm):
    batch = llm.pad_ids([IDS[0]])
    with pytest.raises(InvalidRequest):
        llm.hidden_states(batch, (llm.num_layers + 1,))
    with pytest.raises(InvalidRequest):
        llm.attentions(batch, (1,), [0], (3, 99))

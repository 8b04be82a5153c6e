"""FrozenRuntime: the transformers engine over the frozen base (hidden states, attentions)."""

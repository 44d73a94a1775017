"""The model: tokenizer, the tiny DeepSeek-V3 and its pretraining, loading, architecture, routing, LoRA (01, 03)."""

"""Stage 2: the autoregressive transformer prior over stage-1 tokens.

Not built yet: it is tracked as its own issue (token extraction, a transformers
causal LM, sampling with the KV cache, FID). It will import the tokenizer only
through ``stage1_tokenizer``'s public API.
"""

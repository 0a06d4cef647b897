"""Sampling from the prior with ``transformers``' ``generate()`` (KV cache), and image completion.

``generate_codes`` draws token grids (with classifier-free guidance: the conditional and
unconditional branches in one batched forward per token, ``_generate_guided``);
``complete_codes`` keeps the first rows of a grid and samples the rest.
``sample_images`` / ``complete_image`` add the tokenizer's decoder: these are what
the CLI (``stage2_prior.sample``) and the app call.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList, SuppressTokensLogitsProcessor,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from stage2_prior.model import PriorSpec

# generate() draws from torch's global RNG, so a seeded sampling run must not interleave with another
# thread's: seeded runs hold this lock (the app serves several users from one process).
_SEEDED_SAMPLING = threading.Lock()


def guided_log_probs(cond_scores: torch.Tensor, uncond_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: log p_u + s (log p_c - log p_u) over the vocabulary.

    ``cond_scores`` are the conditional branch's logits with BOS / class tokens already suppressed
    (-inf), ``uncond_logits`` the unconditional branch's raw logits. Tokens masked for the conditional
    branch stay masked. Scale 1 is plain conditional sampling, 0 unconditional.
    """
    cond = torch.log_softmax(cond_scores.float(), dim=-1)
    uncond = torch.log_softmax(uncond_logits.float(), dim=-1)
    mixed = uncond + float(scale) * (cond - uncond)
    return torch.where(torch.isfinite(cond), mixed, cond)


class ClassifierFreeGuidance(LogitsProcessor):
    """Guidance as a second pass: the unconditional branch runs on its own KV cache, one forward per step.

    The conditional sequences start with a class token; the unconditional branch
    sees the same tokens with BOS in its place (the prior was trained with class
    dropout to BOS). ``generate_codes`` runs both branches in one batched forward instead
    (``cfg_batched=True``, the default); this processor is the two-pass reference it is tested
    and benchmarked against (``cfg_batched=False``).
    """

    def __init__(self, model: Any, scale: float, bos_id: int):
        self.model, self.scale, self.bos_id = model, float(scale), bos_id
        self.cache = None
        self.seen = 0  # tokens of the unconditional branch already in its cache

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.cache is None:  # first step: run the whole prompt, start token replaced by BOS
            feed = input_ids.clone()
            feed[:, 0] = self.bos_id
        else:                   # later steps: only the tokens the cache has not seen
            feed = input_ids[:, self.seen:]
        mask = torch.ones_like(input_ids)  # the whole sequence so far: cached part + fed part
        out = self.model(input_ids=feed, attention_mask=mask, cache=self.cache, use_cache=True)
        self.cache, self.seen = out.cache, input_ids.shape[1]
        return guided_log_probs(scores, out.logits[:, -1], self.scale)


class ProgressReport(LogitsProcessor):
    """Calls ``callback(done, total)`` with the tokens sampled so far (over all batches) at every step."""

    def __init__(self, callback: Callable[[int, int], None], done_before: int, batch: int, prompt_len: int,
                 total: int):
        self.callback, self.done_before, self.batch, self.prompt_len, self.total = (
            callback, done_before, batch, prompt_len, total)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.callback(self.done_before + self.batch * (input_ids.shape[1] - self.prompt_len), self.total)
        return scores


def _generation_config(spec: PriorSpec, new_tokens: int, temperature: float, top_k: int | None,
                       top_p: float | None, use_cache: bool) -> GenerationConfig:
    """Every knob set explicitly, so no model default (e.g. top_k=50) leaks in."""
    greedy = temperature == 0
    return GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens,  # always exactly the rest of the grid
        do_sample=not greedy, temperature=None if greedy else float(temperature),
        top_k=None if greedy else (top_k or 0), top_p=None if greedy else (top_p if top_p is not None else 1.0),
        num_beams=1, use_cache=use_cache, bos_token_id=spec.bos_id, pad_token_id=spec.bos_id, eos_token_id=None,
        suppress_tokens=list(range(spec.codebook_size, spec.vocab_size)),  # never sample BOS or class tokens
    )


@contextmanager
def _generation_config_as_default(model: Any, config: GenerationConfig) -> Iterator[None]:
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


def check_request(spec: PriorSpec, num: int, *, batch_size: int = 16, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, cfg_scale: float = 1.0,
                  class_label: int | None = None) -> None:
    """Raise ValueError for a sampling request this prior cannot serve (before anything is sampled)."""
    if num <= 0 or batch_size <= 0:
        raise ValueError(f"num and batch_size must be positive, got {num} and {batch_size}")
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 0):
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
    if class_label is not None:
        spec.class_token(class_label)  # raises for an unconditional prior or an unknown class
    if cfg_scale != 1.0 and class_label is None:
        raise ValueError("cfg_scale needs a class_label (guidance steers towards a class)")


def _warpers(config: GenerationConfig) -> LogitsProcessorList:
    """temperature, top-k, top-p as ``generate()`` applies them when sampling (in this order, after the processors)."""
    warpers = LogitsProcessorList()
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            warpers.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    return warpers


def _generate_guided(prior: Any, prompt: torch.Tensor, uncond_start: int, config: GenerationConfig, scale: float,
                     processors: LogitsProcessorList) -> torch.Tensor:
    """Guided sampling with both branches in one batched forward per step: batch 2n, rows n.. are the same
    sequences with the class token replaced by ``uncond_start`` (BOS), one KV cache holds both branches.

    ``generate()`` cannot tie two rows to one drawn token, so this is its sampling loop for that case, with
    its order: suppressed tokens -> guidance (``guided_log_probs``) -> ``processors`` -> temperature, top-k,
    top-p -> one multinomial draw per sequence (argmax when greedy), written into both branches. With the
    same RNG state it draws what ``generate()`` with the two-pass ``ClassifierFreeGuidance`` draws.
    """
    n = prompt.shape[0]
    uncond_prompt = prompt.clone()
    uncond_prompt[:, 0] = uncond_start
    suppress = SuppressTokensLogitsProcessor(config.suppress_tokens, device=prompt.device)
    warpers = _warpers(config)
    sequences = prompt                                  # the conditional rows, as generate() would return them
    both = torch.cat([prompt, uncond_prompt])           # (2n, L): what the model sees
    feed, cache = both, None
    for _ in range(config.max_new_tokens):
        mask = torch.ones(2 * n, sequences.shape[1], dtype=torch.long, device=prompt.device)  # cached + fed tokens
        out = prior(input_ids=feed, attention_mask=mask, cache=cache, use_cache=config.use_cache, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        scores = guided_log_probs(suppress(sequences, logits[:n]), logits[n:], scale)
        scores = warpers(sequences, processors(sequences, scores))
        if config.do_sample:
            tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        pair = tokens.repeat(2)[:, None]                # the same token in both branches
        if config.use_cache:
            feed, cache = pair, out.cache
        else:                                           # the whole sequences again (timing comparisons)
            both = feed = torch.cat([both, pair], dim=1)
        del out
    return sequences


@torch.no_grad()
def generate_codes(prior: Any, spec: PriorSpec, num: int, *, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, seed: int | None = 0, batch_size: int = 16, cfg_scale: float = 1.0,
                   class_label: int | None = None, prefix: torch.Tensor | None = None,
                   use_cache: bool = True, progress: Callable[[int, int], None] | None = None,
                   cfg_batched: bool = True, logits_processor: LogitsProcessorList | None = None) -> torch.Tensor:
    """Sample ``num`` token grids: a LongTensor (num, h, w) of codes in [0, K).

    temperature 0 is greedy decoding; ``top_k`` / ``top_p`` filter as usual.
    ``prefix`` (num or 1, n) fixes the first n codes of every grid (completion).
    ``class_label`` conditions a class-conditional prior; ``cfg_scale`` != 1 adds
    classifier-free guidance, both branches in one batched forward (``cfg_batched=False``: the
    unconditional branch as a second pass, the reference implementation). The same ``seed`` (and batch
    size) gives the same grids, also when other threads sample at the same time. ``progress(done, total)``
    is called as tokens are sampled; ``logits_processor`` (extra processors) sees the (guided) log-probs
    after BOS / class suppression and guidance, before temperature, top-k and top-p.
    """
    # 1. Check the request against the prior.
    check_request(spec, num, batch_size=batch_size, temperature=temperature, top_k=top_k, top_p=top_p,
                  cfg_scale=cfg_scale, class_label=class_label)
    h, w = spec.grid
    device = next(prior.parameters()).device
    if prefix is None:
        prefix = torch.zeros(1, 0, dtype=torch.long)
    prefix = prefix.long()
    prefix = prefix[None] if prefix.dim() == 1 else prefix.reshape(prefix.shape[0], -1)  # (n,) is one prefix
    if prefix.shape[0] not in (1, num) or prefix.shape[1] >= h * w:
        raise ValueError(f"prefix must be (1 or {num}, n < {h * w}) codes, got {tuple(prefix.shape)}")
    if prefix.numel() and (prefix.min() < 0 or prefix.max() >= spec.codebook_size):
        raise ValueError(f"prefix codes must be in [0, {spec.codebook_size})")
    prefix = prefix.expand(num, -1).to(device)
    config = _generation_config(spec, h * w - prefix.shape[1], temperature, top_k, top_p, use_cache)

    # 2. Sample batch by batch under a private, seeded RNG (the caller's RNG state is left alone), with
    #    our generation config as the model's own for the call: generate() fills every unset field from
    #    model.generation_config, so a saved setting (repetition_penalty, ...) would otherwise leak in.
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else []) if seed is not None else nullcontext()
    lock = _SEEDED_SAMPLING if seed is not None else nullcontext()
    new_per_grid = h * w - prefix.shape[1]
    grids = []
    with lock, rng, _generation_config_as_default(prior, config):
        if seed is not None:
            torch.manual_seed(seed)
        for lo in range(0, num, batch_size):
            n = min(batch_size, num - lo)
            # prompt = start token (BOS or the class token) followed by the fixed prefix codes
            labels = None if class_label is None else torch.full((n,), class_label)
            prompt = torch.cat([spec.start_tokens(labels, n, device), prefix[lo:lo + n]], dim=1)
            guided = cfg_scale != 1.0
            processors = LogitsProcessorList(
                [ClassifierFreeGuidance(prior, cfg_scale, spec.bos_id)] if guided and not cfg_batched else [])
            if progress is not None:
                processors.append(ProgressReport(progress, lo * new_per_grid, n, prompt.shape[1], num * new_per_grid))
            processors.extend(logits_processor or [])
            if guided and cfg_batched:
                out = _generate_guided(prior, prompt, spec.bos_id, config, cfg_scale, processors)
            else:
                out = prior.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                     generation_config=config, logits_processor=processors)
            grids.append(out[:, 1:].reshape(n, h, w))  # drop the start token: prefix + sampled codes
    if progress is not None:
        progress(num * new_per_grid, num * new_per_grid)
    return torch.cat(grids).cpu()


def complete_codes(prior: Any, spec: PriorSpec, codes: torch.Tensor, keep_rows: int, variations: int = 4,
                   **sampling: Any) -> torch.Tensor:
    """Keep the first ``keep_rows`` rows of a (h, w) or (1, h, w) code grid; sample the rest ``variations`` times."""
    h, w = spec.grid
    codes = codes.reshape(-1, h, w) if codes.numel() == h * w else codes
    if codes.shape != (1, h, w) and codes.shape != (h, w):
        raise ValueError(f"expected one ({h}, {w}) code grid, got {tuple(codes.shape)}")
    if not 0 <= keep_rows < h:
        raise ValueError(f"keep_rows must be in [0, {h}), got {keep_rows}")
    prefix = codes.reshape(1, h * w)[:, : keep_rows * w]
    return generate_codes(prior, spec, variations, prefix=prefix, **sampling)


@torch.no_grad()
def decode_codes(tokenizer: Any, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(n, h, w) codes -> (n, 3, H, W) images in [0, 1], decoded on the tokenizer's device."""
    device = next(tokenizer.parameters()).device
    return torch.cat([tokenizer.decode(codes[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(codes), batch_size)])


def sample_images(prior: Any, spec: PriorSpec, tokenizer: Any, num: int, **sampling: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``num`` images; returns (images (num, 3, H, W) in [0, 1], codes (num, h, w))."""
    spec.check_tokenizer(tokenizer)
    codes = generate_codes(prior, spec, num, **sampling)
    return decode_codes(tokenizer, codes), codes


@torch.no_grad()
def complete_image(prior: Any, spec: PriorSpec, tokenizer: Any, image: torch.Tensor, keep_rows: int,
                   variations: int = 4, **sampling: Any) -> dict[str, torch.Tensor]:
    """Encode ``image`` (3, H, W) in [0, 1], keep its first ``keep_rows`` token rows, sample the rest.

    Returns ``completions`` (variations, 3, H, W), ``reconstruction`` (1, 3, H, W: the image
    through the tokenizer), ``kept`` (the reconstruction with the rows to be sampled greyed out)
    and ``codes`` (variations, h, w).
    """
    spec.check_tokenizer(tokenizer)
    size = spec.tokenizer.image_size
    if image.dim() != 3 or image.shape[0] != 3 or tuple(image.shape[1:]) != (size, size):
        raise ValueError(f"expected one image of shape (3, {size}, {size}) for this prior, got {tuple(image.shape)}")
    device = next(tokenizer.parameters()).device
    codes = tokenizer.encode(image[None].to(device)).cpu()
    completions = complete_codes(prior, spec, codes, keep_rows, variations, **sampling)
    recon = decode_codes(tokenizer, codes)
    kept = recon.clone()
    kept[:, :, keep_rows * tokenizer.downsample:] = 0.5
    return {"completions": decode_codes(tokenizer, completions), "reconstruction": recon, "kept": kept,
            "codes": completions}

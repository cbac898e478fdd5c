"""Evaluation: loss and perplexity on held-out answers, and task accuracy (or chrF) of greedy replies."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from helpers.chat import stop_token_ids
from helpers.masking import chat_ids, tokenize_with_mask
from helpers.scoring import REPLY_FIELDS, TASK_ACCURACY, score_any, score_replies
from helpers.stats import wilson_interval


def longest_first(lengths: list[int]) -> list[int]:
    """Indices from the longest item to the shortest: batches of neighbours then need little padding."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.no_grad()
def _row_losses(
    model: PreTrainedModel, rows: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int, desc: str
):
    """Each (ids, labels) row's summed loss and labelled-token count, in order, and the padding share."""
    model.eval()
    device = next(model.parameters()).device
    sums, counts = [0.0] * len(rows), [0] * len(rows)
    computed, real = 0, 0
    order = longest_first([len(ids) for ids, _ in rows])  # neighbours of similar length: little padding
    for i in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        chunk = order[i : i + batch_size]
        batch = [rows[k] for k in chunk]
        width = max(len(ids) for ids, _ in batch)
        computed, real = computed + width * len(batch), real + sum(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, (x, y) in enumerate(batch):
            ids[j, : len(x)], labels[j, : len(y)], mask[j, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
        loss = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels, reduction="none")
        for j, k in enumerate(chunk):
            sums[k], counts[k] = loss[j].sum().item(), int((shift_labels[j] != -100).sum())
    return sums, counts, 1 - real / computed


def eval_loss(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset, batch_size: int = 16
) -> dict:
    """Mean loss per answer token over a conversational prompt/completion dataset, perplexity, padding share.

    Also each example's own mean loss (`per_example`, in the dataset's order), for paired comparisons.
    """
    rows = [tokenize_with_mask(tokenizer, ex) for ex in dataset]
    sums, counts, padding = _row_losses(model, rows, tokenizer.pad_token_id, batch_size, "eval loss")
    mean = sum(sums) / sum(counts)
    return {
        "eval_loss": mean,
        "perplexity": math.exp(mean),
        "answer_tokens": sum(counts),
        "padding_share": padding,
        "per_example": [s / c for s, c in zip(sums, counts, strict=True)],
    }


def text_loss(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 16
) -> dict:
    """Mean loss per token on plain texts and per text (no chat template, all tokens but the first scored)."""
    rows = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=512)["input_ids"]  # with the tokenizer's BOS
        rows.append((ids, ids))
    sums, counts, _ = _row_losses(model, rows, tokenizer.pad_token_id, batch_size, "text loss")
    return {
        "loss": sum(sums) / sum(counts),
        "tokens": sum(counts),
        "per_text": [s / c for s, c in zip(sums, counts, strict=True)],
    }


@torch.no_grad()
def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 100,
) -> list[str]:
    """Greedy replies to chat prompts, batched longest first with left padding, stopping at the end of turn.

    100 prompts a batch: on 2 CPU cores the course's 300 test replies took 10.0 s (4-bit tiny model) and
    9.2 s (float32) instead of 17.4 s and 11.6 s at 32 (each generation step costs about the same
    whatever the batch).
    """
    model.eval()
    device = next(model.parameters()).device
    all_ids = [chat_ids(tokenizer, p, add_generation_prompt=True) for p in prompts]
    order = longest_first([len(ids) for ids in all_ids])  # prompts of similar length together: little padding
    replies: list[str] = []
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="generate", leave=False):
            batch = [all_ids[j] for j in order[i : i + batch_size]]
            enc = tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_token_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
            replies += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    in_order = [""] * len(prompts)
    for j, reply in zip(order, replies, strict=True):
        in_order[j] = reply.strip()
    return in_order


def _replies_and_references(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset, max_new_tokens: int = 64
) -> tuple[list[str], list[str]]:
    """A greedy reply to each example's prompt, and its reference answer (the completion's last message)."""
    replies = generate_replies(model, tokenizer, [ex["prompt"] for ex in dataset], max_new_tokens)
    return replies, [ex["completion"][-1]["content"] for ex in dataset]


def task_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset, max_new_tokens: int = 64
) -> tuple[dict, list[str]]:
    """Generate a reply for each test example and score its header fields against the reference."""
    replies, references = _replies_and_references(model, tokenizer, dataset, max_new_tokens)
    return score_replies(replies, references), replies


def reply_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset, max_new_tokens: int = 64
) -> tuple[dict, list[str]]:
    """Generate a reply per test example; task accuracy if every reference has the header lines, else chrF."""
    replies, references = _replies_and_references(model, tokenizer, dataset, max_new_tokens)
    return score_any(replies, references), replies


@torch.no_grad()
def copy_probe(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pool: list[str],
    length: int = 30,
    n: int = 32,
    seed: int = 0,
) -> dict:
    """Mean loss per token on the first and second copy of random strings from pool, each shown twice."""
    model.eval()
    device = next(model.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    pool_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in pool]
    if any(len(ids) != 1 for ids in pool_ids):
        raise ValueError(
            "copy_probe needs a pool of strings that are one token each; check the pool and tokenizer."
        )
    pool_ids = torch.tensor([ids[0] for ids in pool_ids])
    strings = pool_ids[torch.randint(len(pool_ids), (n, length), generator=rng)]
    # a first token that is never predicted: the start of text,
    # or the end of sequence where a model has none (ChatML)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = torch.cat([torch.full((n, 1), start), strings, strings], dim=1).to(device)
    logits = model(input_ids=ids).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    # loss[:, t] predicts token t + 1: tokens 2..length are the first copy, length + 2..2 * length the second
    # (the first token of each copy cannot be predicted from anything before it)
    first, second = loss[:, 1:length].mean().item(), loss[:, length + 1 :].mean().item()
    return {"first_copy": first, "second_copy": second, "ratio": second / first}


def with_interval(rate: float, n: int) -> str:
    """A rate with its 95% Wilson interval, e.g. '80.0% (95% interval 75.1% to 84.1%, n=300)'."""
    low, high = wilson_interval(rate, n)
    return f"{rate:.1%} (95% interval {low:.1%} to {high:.1%}, n={n})"


def score_line(scores: dict) -> str:
    """reply_scores' scores in one line: task accuracy with its interval and each field, or chrF."""
    if scores["metric"] == TASK_ACCURACY:
        fields = ", ".join(f"{key} {scores[key]:.0%}" for key in REPLY_FIELDS)
        accuracy = with_interval(scores["accuracy"], scores["n"])
        return f"task accuracy (all three fields exact) {accuracy}; per field: {fields}"
    return f"chrF {scores['chrF']:.1f} of 100 (character n-grams shared with the reference), n={scores['n']}"

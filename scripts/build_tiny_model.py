"""Build the `tiny` profile's model: a Llama-3-style tokenizer and a 4 M-parameter Llama, briefly pretrained.

Run from the repository root:  python scripts/build_tiny_model.py [--steps 1400]
It writes models/tiny-llama-support/ (weights, config, tokenizer, build_info.json). Deterministic for a given
machine and torch version; the result is checked in so that CI and learners never need to rebuild it.

The pretraining text is data/pretrain/corpus.txt: general prose in the support domain's language, not the
task's reply format, read in several passes with fresh order numbers each time, plus short warehouse-log lines
that repeat a list (so the model learns to copy from its context). About a third of the paragraphs are wrapped
as user/assistant chat turns, so the model knows the chat template's special tokens (like an Instruct model)
before any fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers.artifacts import save_dir_atomic, shown  # noqa: E402
from helpers.models import (  # noqa: E402
    CHAT_TEMPLATE,
    END_OF_TURN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TINY,
    TINY_MODEL_DIR,
    llama_config,
)

CORPUS = ROOT / "data" / "pretrain" / "corpus.txt"
SUPPORT_TRAIN = ROOT / "data" / "support" / "train.jsonl"
RECAPS = ["In short:", "To repeat:", "The note again:", "Once more, for the record:"]
# Llama 3's pre-tokenizer split: words, numbers in groups of up to 3 digits, punctuation, whitespace.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with Llama 3's split rule, special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Llama 3 groups digits in threes; one token per digit lets a 4 M-parameter model learn to copy numbers.
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=END_OF_TURN,
        pad_token=PAD_TOKEN,
        model_max_length=TINY["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def fresh_numbers(paragraph: str, rng: random.Random) -> str:
    """Replace each distinct 5-digit number by a new random one, consistently within the paragraph."""
    mapping: dict[str, str] = {}
    return re.sub(r"\d{5}", lambda m: mapping.setdefault(m.group(), str(rng.randint(10000, 99999))), paragraph)


DRILLS = [
    ("Tracking numbers on today's van: {a}. Scanned at the door: {a}.", "numbers"),
    ("Orders packed this morning: {a}. Orders checked by the second shift: {a}.", "numbers"),
    ("Returns waiting on shelf B: {a}. Returns logged in the system: {a}.", "products"),
    ("The picking list said {a}. The packer double-checked {a}.", "products"),
    ("Support tickets closed today were tagged {a}. The weekly report counts {a}.", "tags"),
]


def copy_drill(rng: random.Random, products: list[str], tags: list[str]) -> str:
    """A warehouse-log sentence that repeats a random list: only copying from context predicts the repeat.

    The "tags" drills also give the support team's ticket tags (e.g. shipping_delay) trained embeddings, as a
    real pretrained model has for any string it may be asked to write.
    """
    template, kind = rng.choice(DRILLS)
    if kind == "numbers":
        items = [str(rng.randint(10000, 99999)) for _ in range(rng.randint(2, 5))]
    elif kind == "tags":
        items = rng.sample(tags, rng.randint(1, 3))
    else:
        items = rng.sample(products, rng.randint(1, 3))
    return template.format(a=", ".join(items))


def pretraining_stream(
    paragraphs: list[str],
    products: list[str],
    tags: list[str],
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    passes: int,
) -> list[int]:
    """Token ids of several passes over the corpus: plain paragraphs, a third wrapped as one chat exchange.

    Each pass draws new order numbers, so the model cannot memorise them: to predict a repeated number it has
    to copy it from earlier in the text, the skill extraction needs. Short warehouse-log "drills" that repeat a
    random list make that copying signal dense enough for a short CPU pretraining run.
    """
    rng = random.Random(seed)
    ids: list[int] = []
    eos = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    for para in (fresh_numbers(p, rng) for _ in range(passes) for p in paragraphs):
        sentences = [s.strip().rstrip(".") + "." for s in para.split(". ") if s.strip()]
        if len(sentences) >= 3 and rng.random() < 0.3:
            # A verbatim recap of an earlier sentence teaches the model to copy from its context (induction).
            with_details = [s for s in sentences[:-1] if any(ch.isdigit() for ch in s)] or sentences[:-1]
            recap = rng.choice(with_details)
            para = f"{para} {rng.choice(RECAPS)} {recap}"
            sentences.append(recap)
        if len(sentences) >= 3 and rng.random() < 0.33:
            cut = rng.randint(1, len(sentences) - 1)
            messages = [
                {"role": "user", "content": " ".join(sentences[:cut])},
                {"role": "assistant", "content": " ".join(sentences[cut:])},
            ]
            ids += tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        else:
            ids += tokenizer(para)["input_ids"] + [eos]
        if rng.random() < 0.5:
            ids += tokenizer(copy_drill(rng, products, tags))["input_ids"] + [eos]
    return ids


def pretrain(model: LlamaForCausalLM, stream: list[int], steps: int, batch: int, seq: int, lr: float) -> list:
    """Next-token pretraining on random windows of the stream with AdamW and a cosine schedule."""
    data = torch.tensor(stream)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    history = []
    model.train()
    start = time.time()
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - start:6.0f}s", flush=True)
    model.eval()
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1400, help="pretraining steps")
    parser.add_argument("--passes", type=int, default=6, help="passes over the corpus, each with new numbers")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--out", type=Path, default=TINY_MODEL_DIR, help="output folder")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    paragraphs = [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    support = [json.loads(line) for line in SUPPORT_TRAIN.read_text(encoding="utf-8").splitlines()]
    tokenizer = train_tokenizer(
        paragraphs + [ex["prompt"] for ex in support] + [ex["completion"] for ex in support], TINY["vocab_size"]
    )
    products = sorted({ex["product"] for ex in support if ex["product"]})
    tags = sorted({ex["category"] for ex in support})
    stream = pretraining_stream(paragraphs, products, tags, tokenizer, seed=0, passes=args.passes)
    print(f"corpus: {len(paragraphs)} paragraphs, {len(stream):,} tokens")

    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in (END_OF_TURN, "<|end_of_text|>")]
    config = llama_config(
        TINY,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    history = pretrain(model, stream, args.steps, args.batch, args.seq, args.lr)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
    )

    info = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_tokens": len(stream),
        "args": {k: shown(v) if isinstance(v, Path) else str(v) for k, v in vars(args).items()},  # no machine paths
        "torch": torch.__version__,
        "loss_history": history,
    }

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")

    save_dir_atomic(args.out, save)
    print(f"saved {args.out} ({info['parameters']:,} parameters)")


if __name__ == "__main__":
    main()

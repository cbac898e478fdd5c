"""Build the `tiny` profile's model: a Llama-3-style tokenizer and a 4 M-parameter Llama, briefly pretrained.

Run from the repository root:  python scripts/build_tiny_model.py
It writes models/tiny-llama-support/ (weights, config, tokenizer, build_info.json). The defaults are the
shipped model's recipe: about 200 s on one H100/H200 (it was built on an H200), several hours on a CPU
(--snapshots keeps the latest state of a long build). Deterministic for a given machine, device and torch
version; the result is checked in so that CI and learners never need to rebuild it.
It trains on a CUDA GPU when there is one (--device), and prints the copy probe as it goes: the loss on the
second pass of random digit and word strings shown twice, against the first pass (a model that copies from
its context scores a ratio near 0; one that cannot, near 1).

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
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# deterministic cuBLAS on CUDA (set before CUDA starts)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from helpers import ROOT
from helpers.artifacts import atomic_dir, shown
from helpers.chat import CHAT_TEMPLATE, END_OF_TURN, PAD_TOKEN
from helpers.evaluate import copy_probe
from helpers.shapes import TINY, llama_config
from helpers.stand_in import SPECIAL_TOKENS, TINY_MODEL_DIR

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
            # Llama 3 groups digits in threes;
            # one token per digit lets a 4 M-parameter model learn to copy numbers.
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
    return re.sub(
        r"\d{5}", lambda m: mapping.setdefault(m.group(), str(rng.randint(10000, 99999))), paragraph
    )


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
    to copy it from earlier in the text, the skill extraction needs. Short warehouse-log "drills" that repeat
    a random list make that copying signal dense enough for a short CPU pretraining run.
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


def repeat_row(data: torch.Tensor, pools: list[torch.Tensor], seq: int, gen: torch.Generator) -> torch.Tensor:
    """seq tokens of random spans, each shown twice with corpus text between: only copying predicts a repeat.

    Spans vary in length and in the gap before their repeat, so no fixed offset (a positional shortcut)
    predicts them. Each span draws from one pool (digits alone, or words): ten digits repeat often within a
    span, so copying them takes matching more than the one token before (as for a five-digit order number).
    """
    row: list[torch.Tensor] = []
    while sum(len(part) for part in row) < seq:
        length = int(torch.randint(4, 33, (1,), generator=gen))
        pool = pools[int(torch.randint(len(pools), (1,), generator=gen))]
        span = pool[torch.randint(len(pool), (length,), generator=gen)]
        gap_start = int(torch.randint(0, len(data) - 17, (1,), generator=gen))
        gap = data[gap_start : gap_start + int(torch.randint(0, 17, (1,), generator=gen))]
        row += [span, gap, span]
    return torch.cat(row)[:seq]


def probe_pools(tokenizer: PreTrainedTokenizerFast, paragraphs: list[str]) -> dict[str, list[str]]:
    """One-token strings for the copy probe: the ten digits, and corpus words that are a single token."""
    words = sorted({word for para in paragraphs for word in re.findall(r"[a-z]{3,}", para)})
    single = [f" {w}" for w in words if len(tokenizer(f" {w}", add_special_tokens=False)["input_ids"]) == 1]
    return {"digits": [str(d) for d in range(10)], "words": single}


def run_probe(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, pools: dict[str, list[str]]
) -> dict:
    """The copy probe on held-out random strings (a seed the training rows never use), per pool."""
    was_training = model.training
    result = {
        name: copy_probe(model, tokenizer, pool, length=30, n=32, seed=12345) for name, pool in pools.items()
    }
    model.train(was_training)
    return {name: {k: round(v, 3) for k, v in r.items()} for name, r in result.items()}


def pretrain(
    model: LlamaForCausalLM,
    stream: list[int],
    args: argparse.Namespace,
    span_pools: list[torch.Tensor],
    probe: Callable[[], dict],
    snapshot: Callable[[int, list, list], None],
) -> tuple[list, list]:
    """Next-token pretraining on random windows of the stream (a share of rows replaced by repeated spans).

    The learning-rate schedule spans args.steps; training stops after args.stop_at steps. After each probe,
    snapshot(steps_done, history, probes) may save the model, so an interrupted build keeps its latest state.
    """
    device = next(model.parameters()).device
    data = torch.tensor(stream)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    steps, seq = args.steps, args.seq
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    history, probes = [], []
    model.train()
    start = time.time()
    for step in range(args.stop_at or steps):
        starts = torch.randint(0, len(data) - seq - 1, (args.batch,), generator=gen)
        repeats = (
            (torch.rand(args.batch, generator=gen) < args.repeat_share)
            if args.repeat_share
            else [False] * args.batch
        )
        x = torch.stack(
            [
                repeat_row(data, span_pools, seq, gen) if r else data[s : s + seq]
                for s, r in zip(starts, repeats, strict=True)
            ]
        ).to(device)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - start:6.0f}s", flush=True)
        if (step + 1) % args.probe_every == 0 or step + 1 == (args.stop_at or steps):
            probes.append({"step": step + 1, **probe()})
            print(
                "  copy probe (second pass / first pass):",
                ", ".join(
                    f"{k} {v['second_copy']:.2f}/{v['first_copy']:.2f} = {v['ratio']:.2f}"
                    for k, v in probes[-1].items()
                    if k != "step"
                ),
                flush=True,
            )
            if step + 1 < (args.stop_at or steps):  # the last state is saved by the caller
                snapshot(step + 1, history, probes)
    model.eval()
    return history, probes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3000, help="pretraining steps")
    parser.add_argument("--passes", type=int, default=6, help="passes over the corpus, each with new numbers")
    parser.add_argument("--batch", type=int, default=256, help="sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument(
        "--repeat-share", type=float, default=0.5, help="share of rows that are repeated random spans"
    )
    parser.add_argument("--probe-every", type=int, default=200, help="steps between copy probes")
    parser.add_argument(
        "--stop-at",
        type=int,
        default=2200,
        help="stop after this many steps of the --steps schedule (0: all)",
    )
    parser.add_argument(
        "--snapshots", action="store_true", help="save the model after every probe, not only at the end"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument("--out", type=Path, default=TINY_MODEL_DIR, help="output folder")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=args.device != "cpu")
    paragraphs = [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    support = [json.loads(line) for line in SUPPORT_TRAIN.read_text(encoding="utf-8").splitlines()]
    tokenizer = train_tokenizer(
        paragraphs + [ex["prompt"] for ex in support] + [ex["completion"] for ex in support],
        TINY["vocab_size"],
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
    model = LlamaForCausalLM(config).to(args.device)
    pools = probe_pools(tokenizer, paragraphs)
    span_pools = [  # the repeated spans draw from the same tokens as the probe, in other random orders
        torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in pool])
        for pool in pools.values()
    ]
    generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
    )

    def save(steps_done: int, history: list, probes: list) -> None:
        """Write the model, tokenizer and build_info.json to args.out, replacing any earlier build at once."""
        info = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "corpus_tokens": len(stream),
            # no machine paths
            "args": {k: shown(v) if isinstance(v, Path) else str(v) for k, v in vars(args).items()},
            "steps_done": steps_done,  # rebuild this model with --stop-at steps_done (if below --steps)
            "device": args.device,
            "torch": torch.__version__,
            "loss_history": history,
            # per probe step: first- and second-pass loss per token on held-out random strings
            "copy_probe": probes,
        }
        model.generation_config = generation_config
        with atomic_dir(args.out) as folder:
            model.save_pretrained(folder)  # safetensors copies the weights to the CPU
            tokenizer.save_pretrained(folder)
            (folder / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
        print(
            f"saved {shown(args.out)} after {steps_done} steps ({info['parameters']:,} parameters)",
            flush=True,
        )

    history, probes = pretrain(
        model,
        stream,
        args,
        span_pools,
        probe=lambda: run_probe(model, tokenizer, pools),
        snapshot=save if args.snapshots else lambda *_: None,
    )
    save(args.stop_at or args.steps, history, probes)


if __name__ == "__main__":
    main()

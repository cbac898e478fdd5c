"""Export a saved model folder to GGUF for llama.cpp, Ollama and LM Studio, and check the files.

    python scripts/export_gguf.py outputs/lora-merged                # -> outputs/lora-merged-gguf/
    make gguf MODEL=outputs/qlora-merged

What notebooks 2 and 3 do in section 13, for any merged (or fully fine-tuned) folder: llama.cpp's
converter writes f16 and q8_0 files (and Q4_K_M where llama-cpp-python is installed), then the checks
run: end of turn and chat template in the metadata, token ids of tricky text, and f16 logits against the
folder's model. A Modelfile for Ollama is written beside the q8_0 file. Exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from helpers.artifacts import shown
from helpers.chat import load_tokenizer
from helpers.gguf import (
    export_gguf,
    load_gguf,
    metadata_problems,
    read_metadata,
    token_mismatches,
    write_modelfile,
)


def check_logits(model_dir: Path, f16_path: Path, tokenizer) -> str | None:
    """A problem if the f16 file's logits are not within 1% of the largest of the folder's model."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    from_file = load_gguf(f16_path, model)
    ids = tokenizer(["Hello, where is my order 73912?", "The lamp arrived broken."], return_tensors="pt",
                    padding=True)
    with torch.no_grad():
        expected, got = model(**ids).logits, from_file(**ids).logits
    diff, allowed = (got - expected).abs().max().item(), 0.01 * expected.abs().max().item()
    print(f"largest logit difference, f16 file vs the folder's model: {diff:.1e} (allowed: {allowed:.1e})")
    return None if diff <= allowed else f"weights: the f16 file's logits differ by {diff:.2e}"


def main(argv: list[str] | None = None) -> list[Path]:
    """Export, check, and write the Modelfile; the files written."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="a saved model folder (merged, or fully fine-tuned)")
    parser.add_argument("--out", type=Path, help="where the files go (default: <model>-gguf beside it)")
    parser.add_argument("--outtypes", nargs="+", default=["f16", "q8_0", "Q4_K_M"],
                        help="f16 first; Q4_K_M is made where llama-cpp-python is installed")
    parser.add_argument("--pre-tokenizer", help="llama.cpp's name for the split rule (default: the folder's)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the Modelfile's reply length")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").exists():
        sys.exit(f"{args.model} is not a saved model folder (no config.json). For a LoRA adapter, merge "
                 "it first (merge_and_unload, then save_pretrained: notebook 2, section 11).")
    out = args.out or args.model.with_name(args.model.name + "-gguf")
    name = args.model.name.removesuffix("-merged")
    tokenizer = load_tokenizer(str(args.model))

    outtypes = tuple(args.outtypes)
    exported = export_gguf(args.model, out, name, outtypes=outtypes, pre_tokenizer=args.pre_tokenizer)
    files = list(exported.paths.values())
    for path in files:
        print(f"{shown(path)}: {path.stat().st_size / 2**20:.2f} MiB")
    for outtype, why in exported.not_made.items():
        print(f"{outtype}: not made here, {why}")
    print(f"converted in {exported.seconds:.0f} s")
    if exported.named_pre_tokenizer:
        print(f"pre-tokenizer: not recognised by the converter; named {exported.named_pre_tokenizer!r}")

    first = exported.paths[args.outtypes[0]]
    problems = metadata_problems(read_metadata(first), tokenizer)
    wrong = token_mismatches(first, tokenizer)
    problems += [f"tokens: {text!r} encodes to {got}, not {expected}" for text, expected, got in wrong]
    problems.append(check_logits(args.model, first, tokenizer))
    problems = [problem for problem in problems if problem]
    modelfile = write_modelfile(exported.paths.get("q8_0", first), tokenizer, args.max_new_tokens)
    print(f"Ollama: ollama create my-model -f {shown(modelfile)}")
    if problems:
        sys.exit("The export would not chat as trained:\n" + "\n".join(problems))
    print("checks: end of turn, chat template, token ids and logits all as the folder's model")
    return [*files, modelfile]


if __name__ == "__main__":
    main()

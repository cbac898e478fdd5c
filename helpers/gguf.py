"""GGUF export for llama.cpp and Ollama: llama.cpp's own converter, fetched once, and checks of its files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from helpers.artifacts import shown
from helpers.chat import CHAT_TEMPLATE_KWARGS, end_of_turn
from helpers.models import CACHE_DIR
from helpers.stats import differs, mcnemar_exact, paired_difference

# llama.cpp's HF-to-GGUF converter ships in llama-cpp-python's source package (not in its wheel)
LLAMA_CPP_PYTHON = "0.3.36"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
    "llama_cpp_python-0.3.36.tar.gz"
)
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")  # under vendor/llama.cpp/
# made from the f16 file by llama.cpp's own quantizer (in llama-cpp-python), not by the converter
QUANTIZER_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K")
# The split rules (pre-tokenizers) llama.cpp knows by name, as tokenizer.json writes them. The converter knows
# published tokenizers by a hash of how they split a test text; another tokenizer's rule must be named.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# strings where tokenizers tend to disagree: digits, spaces, tabs, newlines, accents, emoji, contractions
TRICKY_TEXTS = (
    "order 73912, 3 items at 1234567 cents",
    "two  spaces,   three, and a trailing one ",
    "\ttab\t\tthen two",
    "line one\n\nline three\r\n",
    "café, naïve, Ångström, Straße, Ελληνικά",
    "emoji 🦙 and ✅ done",
    "DON'T (really) I'M sure",  # contractions in capitals, brackets: where split rules differ
)

# Runs llama.cpp's converter once per output type in one process, naming the pre-tokenizer only where the
# converter does not recognise it. Arguments: script, pre-tokenizer, model folder, then outtype=path pairs.
_CONVERT = """
import runpy, sys
from conversion import base
script, named, model, outputs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
recognise = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return recognise(self, tokenizer)
    except NotImplementedError:
        if named == "-":
            raise
        print("NAMED-PRE-TOKENIZER", named, flush=True)
        return named
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
for output in outputs:
    outtype, path = output.split("=", 1)
    sys.argv = [script, model, "--outfile", path, "--outtype", outtype]
    runpy.run_path(script, run_name="__main__")
    print("WROTE", outtype, flush=True)
"""


def pre_tokenizer_name(model_dir: str | Path) -> str | None:
    """llama.cpp's name for the split rule in a folder's tokenizer.json: Llama 3's or GPT-2's, else None."""
    pre = (
        json.loads((Path(model_dir) / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer")
        or {}
    )
    parts = pre.get("pretokenizers", [pre])
    if any(part.get("type") == "Split" and part["pattern"].get("Regex") == LLAMA3_SPLIT for part in parts):
        return "llama-bpe"
    if any(part.get("type") == "ByteLevel" and part.get("use_regex") for part in parts):
        return "gpt-2"
    return None


@dataclass
class Export:
    """The GGUF files made from one model folder, the time it took, the pre-tokenizer named (or None)."""

    paths: dict[str, Path]  # per output type
    seconds: float
    named_pre_tokenizer: str | None
    not_made: dict[str, str] = field(default_factory=dict)  # output type: why it was not made here


def converter_dir(cache_dir: str | Path | None = None) -> Path:
    """llama.cpp's converter at the pinned version: fetched from the package registry once, then cached."""
    root = Path(cache_dir or CACHE_DIR) / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if (root / "convert_hf_to_gguf.py").exists():
        return root
    print(
        f"Fetching llama.cpp's converter (llama-cpp-python {LLAMA_CPP_PYTHON} source, 77 MB) ...", flush=True
    )
    with urllib.request.urlopen(SDIST_URL, timeout=120) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        raise RuntimeError(
            f"{SDIST_URL} does not have the expected sha256 {SDIST_SHA256}: download it again."
        )
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    partial = root.with_name(root.name + ".partial")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = [
            m
            for m in archive.getmembers()
            if m.name.startswith(prefix) and m.isfile() and m.name[len(prefix) :].startswith(CONVERTER_PARTS)
        ]
        for member in members:
            member.name = member.name[len(prefix) :]
        archive.extractall(partial, members=members, filter="data")
    partial.rename(root)  # complete or absent: an interrupted fetch is redone
    return root


def export_gguf(
    model_dir: str | Path,
    out_dir: str | Path,
    name: str,
    outtypes: tuple[str, ...] = ("f16", "q8_0"),
    pre_tokenizer: str | None = None,
) -> Export:
    """Convert a saved HF model folder to GGUF files (f16, bf16, q8_0 ...) with llama.cpp's converter.

    Where the converter does not recognise the tokenizer, it is told the split rule's name: pre_tokenizer, or
    the one read from the folder's tokenizer.json. Q4_K_M and the other QUANTIZER_TYPES are quantized from the
    f16 file where llama-cpp-python is installed; elsewhere they are listed in not_made, with why.
    """
    quantized = tuple(outtype for outtype in outtypes if outtype in QUANTIZER_TYPES)
    outtypes = tuple(outtype for outtype in outtypes if outtype not in QUANTIZER_TYPES)
    if quantized and "f16" not in outtypes:
        raise ValueError(f"{quantized[0]} is quantized from the f16 file: add 'f16' to outtypes.")
    # absolute: the converter runs in its own folder
    converter, model_dir, out_dir = converter_dir(), Path(model_dir).resolve(), Path(out_dir).resolve()
    pre_tokenizer = pre_tokenizer or pre_tokenizer_name(model_dir) or "-"  # "-": none to name
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {outtype: out_dir / f"{name}-{outtype}.gguf" for outtype in outtypes}
    partials = {outtype: path.with_name(path.name + ".partial") for outtype, path in paths.items()}
    command = [
        sys.executable,
        "-c",
        _CONVERT,
        str(converter / "convert_hf_to_gguf.py"),
        pre_tokenizer,
        str(model_dir),
        *(f"{outtype}={path}" for outtype, path in partials.items()),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(converter), str(converter / "gguf-py")])}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=converter, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        for partial in partials.values():
            partial.unlink(missing_ok=True)
        hint = ""
        if pre_tokenizer == "-" and "pre-tokenizer was not recognized" in done.stderr:
            hint = (
                "\nThe converter does not know this tokenizer, and its tokenizer.json splits text with "
                "neither Llama 3's rule nor GPT-2's: pass pre_tokenizer= one of the names in "
                "get_vocab_base_pre() of "
                f"{shown(converter / 'conversion' / 'base.py')}, and check the token ids after."
            )
        raise RuntimeError(
            f"llama.cpp's converter failed on {shown(model_dir)}:\n{done.stderr[-3000:]}{hint}"
        )
    named = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("NAMED-PRE-TOKENIZER")]
    for outtype, path in paths.items():
        partials[outtype].replace(path)  # each finished file appears whole, or not at all
    not_made = {}
    for outtype in quantized:
        if quantized_path := quantize_gguf(paths["f16"], outtype):
            paths[outtype] = quantized_path
        else:
            not_made[outtype] = "llama.cpp's quantizer is not installed (make gguf-check installs it)"
    return Export(paths, time.perf_counter() - start, (named or [None])[0], not_made)


def read_metadata(path: str | Path) -> dict:
    """The GGUF fields that decide how a chat runs: special token ids, chat template, pre-tokenizer."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {}
    for key in (
        "general.architecture",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.chat_template",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
    ):
        field = reader.get_field(key)
        fields[key] = None if field is None else field.contents()
    return fields


def metadata_problems(metadata: dict, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """What in the file's metadata would break a chat (end of turn, template, pad); empty if nothing."""
    problems = []
    eot = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    stops = {metadata["tokenizer.ggml.eos_token_id"], metadata["tokenizer.ggml.eot_token_id"]}
    if eot not in stops:
        problems.append(
            f"end of turn: the file stops on ids {sorted(i for i in stops if i is not None)}, "
            f"not on the tokenizer's end of turn {eot}: replies would never end"
        )
    if metadata["tokenizer.chat_template"] != tokenizer.chat_template:
        problems.append(
            "chat template: the file's differs from the tokenizer's (or is missing): llama.cpp and "
            "Ollama would write prompts the model was not trained on"
        )
    if metadata["tokenizer.ggml.padding_token_id"] == eot:
        problems.append("pad: the file pads with the end of turn")
    return problems


def token_mismatches(
    gguf_path: str | Path, tokenizer: PreTrainedTokenizerBase, texts: tuple[str, ...] = TRICKY_TEXTS
) -> list[tuple[str, list[int], list[int]]]:
    """Texts (tricky ones, every special token, a chat prompt) the file's vocabulary encodes otherwise."""
    gguf_path = Path(gguf_path)
    from_file = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": texts[0]}],
        tokenize=False,
        add_generation_prompt=True,
        **CHAT_TEMPLATE_KWARGS,
    )
    specials = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    wrong = []
    for text in (*texts, " ".join(specials), prompt):
        expected = tokenizer.encode(text, add_special_tokens=False)
        got = from_file.encode(text, add_special_tokens=False)
        if got != expected:
            wrong.append((text, expected, got))
    return wrong


def load_gguf(gguf_path: str | Path, like: PreTrainedModel) -> PreTrainedModel:
    """A GGUF file's weights back in transformers (dequantized), with the config, dtype and device of like."""
    gguf_path = Path(gguf_path)
    # like's config: transformers' GGUF reader drops Llama 3's RoPE scaling, which changes the logits
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, config=like.config, dtype=like.dtype
    )
    return model.to(like.device).eval()


def modelfile_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt for one user turn, in Ollama's template syntax ({{ .Prompt }}, {{ .Response }})."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "{{ .Prompt }}"}],
        tokenize=False,
        add_generation_prompt=True,
        **CHAT_TEMPLATE_KWARGS,
    )
    if tokenizer.bos_token and prompt.startswith(tokenizer.bos_token):
        prompt = prompt[
            len(tokenizer.bos_token) :
        ]  # llama.cpp adds the BOS token itself (add_bos_token in the file)
    return prompt + "{{ .Response }}" + end_of_turn(tokenizer)


def write_modelfile(gguf_path: str | Path, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> Path:
    """An Ollama Modelfile beside the GGUF file: the prompt as trained, the stop token, greedy replies."""
    gguf_path = Path(gguf_path)
    text = (
        f"# ollama create my-model -f {gguf_path.parent.name}/Modelfile, then: ollama run my-model\n"
        f"FROM ./{gguf_path.name}\n"
        f'TEMPLATE """{modelfile_template(tokenizer)}"""\n'
        f'PARAMETER stop "{end_of_turn(tokenizer)}"\n'
        "PARAMETER temperature 0\n"
        f"PARAMETER num_predict {max_new_tokens}\n"
    )
    path = gguf_path.parent / "Modelfile"
    path.write_text(text, encoding="utf-8")
    return path


def quantize_gguf(f16_path: str | Path, outtype: str = "Q4_K_M") -> Path | None:
    """llama.cpp's quantizer on the f16 file, where llama-cpp-python is installed; else None."""
    if "-f16" not in Path(f16_path).name:  # the new file's name replaces -f16
        raise ValueError(f"quantize_gguf needs an f16 file (named ...-f16.gguf), not {Path(f16_path).name}.")
    try:
        import llama_cpp
    except ImportError:
        return None
    import ctypes
    import logging

    # llama.cpp logs every tensor it quantizes; keep its errors only
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    f16_path = Path(f16_path)
    out_path = f16_path.with_name(f16_path.name.replace("-f16", f"-{outtype}"))
    partial = out_path.with_name(out_path.name + ".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype}")
    if (
        llama_cpp.llama_model_quantize(str(f16_path).encode(), str(partial).encode(), ctypes.byref(params))
        != 0
    ):
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not quantize {shown(f16_path)} to {outtype}.")
    partial.replace(out_path)
    return out_path


def cost_line(name: str, before: dict, after: dict) -> str:
    """A file's test score beside the merged model's, with McNemar's test (accuracy) or paired chrF."""
    if "accuracy" in before:
        test = mcnemar_exact(before["per_reply"], after["per_reply"])
        verdict = "different" if differs(test) else "not shown different"
        return (
            f"{name}: accuracy {after['accuracy']:.1%} vs the merged model's {before['accuracy']:.1%}; "
            f"right only before export {test['only_first']}, only after {test['only_second']} "
            f"(McNemar p = {test['p']:.2f}, {verdict})"
        )
    test = paired_difference(before["per_reply"], after["per_reply"])
    verdict = "different" if differs(test) else "not shown different"
    return (
        f"{name}: chrF {after['chrF']:.1f} vs the merged model's {before['chrF']:.1f}; per reply "
        f"{test['mean']:+.2f} (95% interval {test['low']:+.2f} to {test['high']:+.2f}, {verdict})"
    )


def llama_cpp_lines(check: dict) -> list[str]:
    """What make gguf-check measured in llama.cpp itself (results/gguf.json), as lines to print."""
    build = check["build"]
    lines = [
        f"llama.cpp through llama-cpp-python {check['versions']['llama_cpp_python']} (built from source "
        f"in {build['seconds'] / 60:.0f} min on {build['cpu_count']} cores), {check['model']}, "
        f"on {check['device']}:",
        f"  prompt from the file's chat template equals apply_chat_template: {check['prompt_equal']}",
        f"  token ids equal the tokenizer's on {check['tokens']['equal']} of {check['tokens']['texts']} "
        "texts",
    ]
    for outtype, run in check["files"].items():
        line = (
            f"  {outtype} ({run['bytes'] / 2**20:.1f} MiB): {run['stopped']} of {run['replies']} replies "
            f"stopped at {check['end_of_turn']}; of the other {run['replies'] - run['stopped']}, "
            f"{run['same_weights_ran_to_the_limit']} run on as long with the same weights in transformers"
        )
        if "equal_to_hf" in run:
            line += (f"; {run['equal_to_hf']} of {run['replies']} greedy replies equal the merged HF model's "
                     f"({run['equal_to_hf_f16_weights']} with the file's f16 weights in transformers)")
        lines.append(line + f"; {run['cost']}")
    return lines

"""Run the exported GGUF files through llama.cpp itself: the check that CI cannot afford.

    make gguf-check          # -> results/gguf.json; builds llama-cpp-python the first time

1. Builds llama-cpp-python at the pinned version from its source package, once (the registry has no CPU
   wheel), keeps the wheel in .cache/wheels/ with the time the build took, and installs it into the venv.
2. Exports the merged LoRA model that notebook 2 saved (outputs/lora-merged) to f16 and q8_0 with
   llama.cpp's converter, and to Q4_K_M with llama.cpp's quantizer (helpers.gguf). It trains nothing.
3. Chats with each file in llama.cpp, through the chat template stored in the file, and records: whether
   each reply stopped at the end-of-turn token, whether the f16 greedy replies equal the HF model's, and
   each file's accuracy on the test questions next to the merged model's (the notebooks' paired test).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON = "0.3.36"  # the same version whose converter helpers.gguf uses
WHEELS = ROOT / ".cache" / "wheels"
BUILD_RECORD = WHEELS / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.build.json"
# no multimodal library (not needed here), and code for this CPU
CMAKE_ARGS = "-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON"


def build_wheel() -> dict:
    """Build llama-cpp-python's wheel from source into .cache/wheels/, with progress; the build record."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    print(
        f"Building llama-cpp-python {LLAMA_CPP_PYTHON} from source (CMAKE_ARGS={CMAKE_ARGS}); "
        "10 to 16 minutes on 2 cores, once.",
        flush=True,
    )
    start = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--verbose",
        "-w",
        str(WHEELS),
        f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
    ]
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS}
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(60):
            print(f"  still building: {(time.perf_counter() - start) / 60:.0f} min", flush=True)

    threading.Thread(target=heartbeat, daemon=True).start()
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as build:
        log = []
        for line in build.stdout:
            log.append(line)
            step = re.search(r"\[(\d+)/(\d+)\]", line)  # ninja's "[12/140] Building CXX object ..."
            if step and int(step[1]) % 20 == 0:
                print(f"  {time.perf_counter() - start:5.0f} s  compiled {step[1]} of {step[2]}", flush=True)
    done.set()
    seconds = time.perf_counter() - start
    if build.returncode != 0:
        sys.exit(
            "The build failed; its last lines:\n"
            + "".join(log[-40:])
            + "\nIt needs a C++ compiler and cmake >= 3.21 (Debian: apt install build-essential cmake)."
        )
    record = {
        "version": LLAMA_CPP_PYTHON,
        "cmake_args": CMAKE_ARGS,
        "seconds": round(seconds, 1),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    BUILD_RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(f"Built in {seconds / 60:.1f} min.", flush=True)
    return record


def ensure_llama_cpp() -> dict:
    """Install llama-cpp-python from the cached wheel, built first if there is none; the build record."""
    try:
        import llama_cpp

        if llama_cpp.__version__ == LLAMA_CPP_PYTHON and BUILD_RECORD.exists():
            return json.loads(BUILD_RECORD.read_text())
    except ImportError:
        pass
    wheels = sorted(WHEELS.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl"))
    record = json.loads(BUILD_RECORD.read_text()) if wheels and BUILD_RECORD.exists() else build_wheel()
    wheels = sorted(WHEELS.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl"))
    # with what it needs (diskcache; numpy and jinja2 are there already)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(wheels[-1])], check=True)
    return record


def run_in_llama_cpp(path: Path, prompts: list[list[dict]], max_new_tokens: int) -> dict:
    """Greedy chat replies from llama.cpp with the file's own chat template, and how each one ended."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=512, n_threads=os.cpu_count(), seed=0, verbose=False)
    replies, stops = [], []
    for messages in tqdm(prompts, desc=path.name):
        out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_new_tokens)
        replies.append(out["choices"][0]["message"]["content"].strip())
        stops.append(out["choices"][0]["finish_reason"])  # "stop": the end of turn; "length": max_tokens
    return {"llm": llm, "replies": replies, "stops": stops, "chat_format": llm.chat_format}


README_BLOCK = re.compile(r"(<!-- gguf check -->\n).*?(<!-- /gguf check -->)", re.S)


def readme_block(text: str, check: dict) -> str:
    """The README with its block printed again from results/gguf.json."""
    from helpers.gguf import llama_cpp_lines

    block = "```text\n" + "\n".join(llama_cpp_lines(check)) + "\n```\n"
    return README_BLOCK.sub(lambda match: match[1] + block + match[2], text)


def ran_to_the_limit(model, tokenizer, messages: list[dict], max_new_tokens: int) -> bool:
    """Whether the HF model's greedy reply to one chat also runs to max_new_tokens without an end of turn."""
    from helpers.chat import CHAT_TEMPLATE_KWARGS, stop_token_ids

    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True, **CHAT_TEMPLATE_KWARGS
    )
    out = model.generate(
        **ids,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    return len(new) == max_new_tokens and new[-1] not in stop_token_ids(tokenizer)


def main() -> None:
    """Parse the command line and run the check."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build and install llama-cpp-python, then stop"
    )
    parser.add_argument(
        "--model", default=str(ROOT / "outputs" / "lora-merged"), help="a merged model folder"
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "gguf.json"))
    parser.add_argument("--test", type=int, default=300, help="test questions to score (the notebooks' 300)")
    parser.add_argument("--readme", action="store_true", help="print README's block again from --out")
    args = parser.parse_args()
    if args.readme:
        readme = ROOT / "README.md"
        check_record = json.loads(Path(args.out).read_text())
        readme.write_text(readme_block(readme.read_text(encoding="utf-8"), check_record))
        return
    record = ensure_llama_cpp()
    if args.build_only:
        print(json.dumps(record))
        return
    model_dir = Path(args.model)
    if not (model_dir / "config.json").exists():
        sys.exit(
            f"No merged model in {model_dir}: run notebook 2 first (make course), or pass --model FOLDER."
        )
    check(model_dir, Path(args.out), args.test, record)


def check(model_dir: Path, out: Path, n_test: int, build: dict) -> None:
    """Export, run every file in llama.cpp, compare with the HF model, write the record."""
    import torch
    from llama_cpp import __version__ as llama_cpp_version
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoModelForCausalLM

    from helpers.artifacts import shown
    from helpers.chat import CHAT_TEMPLATE_KWARGS, end_of_turn, load_tokenizer
    from helpers.data import load_support, to_conversational
    from helpers.evaluate import generate_replies
    from helpers.gguf import TRICKY_TEXTS, cost_line, export_gguf, load_gguf, quantize_gguf, read_metadata
    from helpers.hardware import detect_hardware
    from helpers.install import package_versions
    from helpers.results import write_json_atomic
    from helpers.scoring import score_any

    tokenizer = load_tokenizer(str(model_dir))
    merged = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    test = to_conversational(load_support({"test": n_test}), chat_template_kwargs=CHAT_TEMPLATE_KWARGS)[
        "test"
    ]
    prompts = [example["prompt"] for example in test]
    references = [example["completion"][-1]["content"] for example in test]
    max_new_tokens = 64  # the notebooks' MAX_NEW_TOKENS

    exported = export_gguf(model_dir, ROOT / "outputs" / "gguf-check", "check", outtypes=("f16", "q8_0"))
    files = dict(exported.paths)
    files["Q4_K_M"] = quantize_gguf(files["f16"], "Q4_K_M")
    metadata = read_metadata(files["f16"])
    print(
        f"Exported in {exported.seconds:.0f} s: "
        + ", ".join(f"{p.name} {p.stat().st_size:,} bytes" for p in files.values()),
        flush=True,
    )

    hf_replies = generate_replies(merged, tokenizer, prompts, max_new_tokens)
    # the same f16-rounded weights in transformers: tells llama.cpp's arithmetic apart from the rounding
    hf_f16_replies = generate_replies(load_gguf(files["f16"], merged), tokenizer, prompts, max_new_tokens)
    hf_scores = score_any(hf_replies, references)
    runs = {}
    for outtype, path in files.items():
        ran = run_in_llama_cpp(path, prompts, max_new_tokens)
        scores = score_any(ran["replies"], references)
        unstopped = [i for i, stop in enumerate(ran["stops"]) if stop != "stop"]
        same_weights = load_gguf(path, merged)
        runs[outtype] = {
            "bytes": path.stat().st_size,
            "replies": len(prompts),
            "stopped": ran["stops"].count("stop"),
            # the same weights in transformers: an unstopped reply there too is the model's, not the export's
            "same_weights_ran_to_the_limit": sum(
                ran_to_the_limit(same_weights, tokenizer, prompts[i], max_new_tokens) for i in unstopped
            ),
            "chat_format": ran["chat_format"],
            "cost": cost_line("accuracy in llama.cpp", hf_scores, scores),
            "examples": [
                {"prompt": p[-1]["content"], "reply": r, "finish": f}
                for p, r, f in zip(prompts[:3], ran["replies"][:3], ran["stops"][:3], strict=False)
            ],
        }
        if outtype == "f16":
            runs[outtype]["equal_to_hf"] = sum(
                a == b for a, b in zip(ran["replies"], hf_replies, strict=True)
            )
            runs[outtype]["equal_to_hf_f16_weights"] = sum(
                a == b for a, b in zip(ran["replies"], hf_f16_replies, strict=True)
            )
            llm = ran["llm"]
            texts = [
                *TRICKY_TEXTS,
                " ".join(t.content for t in tokenizer.added_tokens_decoder.values() if t.special),
            ]
            same = [
                llm.tokenize(text.encode(), add_bos=False, special=True)
                == tokenizer.encode(text, add_special_tokens=False)
                for text in texts
            ]
            formatter = Jinja2ChatFormatter(
                template=metadata["tokenizer.chat_template"],
                eos_token=end_of_turn(tokenizer),
                bos_token=tokenizer.bos_token or "",
            )
            prompt_equal = all(
                formatter(messages=p).prompt
                == tokenizer.apply_chat_template(
                    p, tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS
                )
                for p in prompts[:20]
            )
        print(
            f"{outtype}: {runs[outtype]['stopped']} of {len(prompts)} stopped at the end of turn; "
            f"{runs[outtype]['cost']}",
            flush=True,
        )

    hardware = detect_hardware()
    record = {
        "produced_by": "scripts/gguf_check.py (make gguf-check)",
        "date": time.strftime("%Y-%m-%d"),
        "model": f"{shown(model_dir)} (notebook 2's merged LoRA model)",
        "device": hardware.describe(),
        "versions": {"llama_cpp_python": llama_cpp_version, **package_versions()},
        "build": build,
        "export_seconds": round(exported.seconds, 1),
        "named_pre_tokenizer": exported.named_pre_tokenizer,
        "end_of_turn": end_of_turn(tokenizer),
        "prompt_equal": prompt_equal,
        "tokens": {"texts": len(texts), "equal": sum(same)},
        "hf_accuracy": hf_scores.get("accuracy", hf_scores.get("chrF")),
        "files": runs,
    }
    write_json_atomic(out, record)
    print(f"Wrote {shown(out)}.")
    if out == ROOT / "results" / "gguf.json":
        readme = ROOT / "README.md"
        readme.write_text(readme_block(readme.read_text(encoding="utf-8"), record))


if __name__ == "__main__":
    main()

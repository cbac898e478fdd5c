"""Checks only the tests use: notebook code against the pinned libraries' signatures, and token-id rules."""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap

from transformers import PreTrainedTokenizerBase

from helpers.chat import NO_TEMPLATE_HELP

# Keyword arguments that old tutorials pass and the pinned libraries no longer take, with what replaced them.
RENAMED_KEYWORDS = {
    "max_seq_length": "max_length (in SFTConfig)",
    "dataset_text_field": "SFTConfig(dataset_text_field=...), not SFTTrainer",
    "tokenizer": "processing_class",
    "evaluation_strategy": "eval_strategy",
    "use_auth_token": "token",
    "torch_dtype": "dtype",
    "load_in_4bit": "quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...)",
    "load_in_8bit": "quantization_config=BitsAndBytesConfig(load_in_8bit=True)",
}
# The constructors and functions whose keyword arguments the notebooks rely on.
CHECKED_CALLS = {
    "SFTConfig": "trl:SFTConfig",
    "SFTTrainer": "trl:SFTTrainer",
    "TrainingArguments": "transformers:TrainingArguments",
    "Trainer": "transformers:Trainer",
    "BitsAndBytesConfig": "transformers:BitsAndBytesConfig",
    "LoraConfig": "peft:LoraConfig",
    "get_peft_model": "peft:get_peft_model",
    "prepare_model_for_kbit_training": "peft:prepare_model_for_kbit_training",
    "merge_and_unload": "peft:LoraModel.merge_and_unload",
    "from_pretrained": "transformers:PreTrainedModel.from_pretrained",
    "pipeline": "transformers:pipeline",
}
PEFT_FROM_PRETRAINED = "peft:PeftModel.from_pretrained"



def _resolve(target: str) -> object:
    """'package:Class.attr' -> the object."""
    module_name, _, qualname = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def accepted_keywords(func: object) -> set[str] | None:
    """Keyword names a callable takes: its parameters and the names it pops from **kwargs (None: unknown)."""
    target = func.__init__ if inspect.isclass(func) else func
    params = inspect.signature(target).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return names
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(target)))
    except (OSError, TypeError, SyntaxError):
        return None
    popped = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("pop", "get")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "kwargs"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    return names | popped


def unknown_call_keywords(code: str) -> list[str]:
    """Keyword arguments in code the installed transformers/peft/trl no longer take, each with its fix."""
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]  # IPython magics
    problems = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        target = CHECKED_CALLS.get(name)
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if name == "from_pretrained" and owner == "PeftModel":
            target = PEFT_FROM_PRETRAINED
        elif name == "from_pretrained" and "Tokenizer" in owner:
            continue  # tokenizers take their own options
        if target is None:
            continue
        accepted = accepted_keywords(_resolve(target))
        if accepted is None:
            continue
        for keyword in node.keywords:
            if keyword.arg is not None and keyword.arg not in accepted:
                fix = RENAMED_KEYWORDS.get(
                    keyword.arg, "see the library's documentation for the current name"
                )
                problems.append(f"line {node.lineno}: {name}({keyword.arg}=...) is not accepted; use {fix}")
    return problems


def check_one_bos(ids: list[int], tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise unless ids hold exactly one begin-of-text token, at position 0."""
    at = [i for i, t in enumerate(ids) if t == tokenizer.bos_token_id]
    if at != [0]:
        raise ValueError(
            f"Expected one {tokenizer.bos_token} at position 0, found it at positions {at[:5]}. "
            "The chat template already writes it: tokenize with apply_chat_template(..., tokenize=True), "
            "or call tokenizer(text, add_special_tokens=False) on rendered text."
        )


def check_template_pinned(tokenizer: PreTrainedTokenizerBase, template_kwargs: dict | None) -> None:
    """Refuse a chat template that writes today's date unless date_string is pinned."""
    template = tokenizer.chat_template
    if template is None:
        raise ValueError(f"The tokenizer {NO_TEMPLATE_HELP}")
    if "strftime_now" in template and "date_string" not in (template_kwargs or {}):
        raise ValueError(
            "This chat template writes today's date into every prompt, so token ids change from day to day. "
            "Fix: pass date_string, e.g. apply_chat_template(..., **helpers.chat.CHAT_TEMPLATE_KWARGS)."
        )

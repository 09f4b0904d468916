"""Supervised fine-tuning of the local chat model on ``priors sft-data`` examples, on CPU.

The base is the local backend's GGUF (SmolLM2-135M-Instruct by default), dequantised to float32 by
transformers. The loss covers the assistant answer only (prompt tokens are masked). LoRA adapters
(``peft``) are merged into the weights before saving, so the checkpoint directory is a plain
transformers model + tokenizer that ``--llm local --model DIR`` loads. The directory appears whole
or not at all: it is written beside the target and renamed into place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmhyper_feast.errors import BackendError, DataError, InputError

__all__ = ["FinetuneConfig", "finetune", "load_examples", "load_base", "tokenize_example"]

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REPORT_FILE = "llmhyper_finetune.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Training settings; ``lr`` None picks 1e-3 for LoRA and 5e-5 for full fine-tuning."""

    epochs: int = 1
    lora: bool = True
    max_examples: int | None = None
    max_length: int = 2048
    lr: float | None = None
    seed: int = 0
    lora_rank: int = 16
    grad_accum: int = 4

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.lora else 5e-5)


def load_examples(path: str | Path) -> list[list[dict[str, str]]]:
    """The message lists of a chat-format JSONL file; DataError names the first bad line."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{i} is not a {{'messages': [...]}} JSON line ({exc}); regenerate it.") from None
        if not messages or messages[-1].get("role") != "assistant":
            raise DataError(f"{path}:{i}: the last message must be the assistant's answer; regenerate the file.")
        out.append(messages)
    if not out:
        raise DataError(f"{path} holds no examples; run `llmhyper priors sft-data` first.")
    return out


def load_base(base: str | Path | None) -> tuple[Any, Any, str]:
    """(float32 model, tokenizer, name) of a GGUF file or a transformers checkpoint dir (None: the default GGUF)."""
    import transformers

    from llmhyper_feast.backends.llm.local import default_gguf_path

    path = Path(base).expanduser() if base is not None else default_gguf_path()
    try:
        if path.is_dir():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
            model = transformers.AutoModelForCausalLM.from_pretrained(str(path))
        elif path.is_file():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            raise InputError(f"--base {path} does not exist; give a .gguf file or a checkpoint directory.")
    except (OSError, ValueError) as exc:
        raise BackendError(f"Could not load the base model {path}: {type(exc).__name__}: {exc}") from exc
    if getattr(model, "is_quantized", False):
        # GGUF weights arrive dequantised to float32 but the model stays flagged as quantized, which
        # blocks training and saving: rebuild a plain model around the same weights
        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        plain = transformers.AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        model = plain
    return model.float(), tokenizer, path.name


def tokenize_example(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: labels are -100 on the prompt, the ids on the answer."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise DataError("The chat template does not render the prompt as a prefix of the conversation.")
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    answer_ids = list(tokenizer(full[len(prompt) :].rstrip("\n"), add_special_tokens=False)["input_ids"])
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _save_atomically(model: Any, tokenizer: Any, out: Path, report: dict[str, Any]) -> None:
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finetune(
    data: str | Path,
    out: str | Path,
    *,
    base: str | Path | None = None,
    config: FinetuneConfig = FinetuneConfig(),
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune on ``data`` (chat JSONL) and save the merged model + tokenizer to ``out``; returns the report
    (examples, steps, per-step losses, mean loss per epoch, seconds)."""
    import torch
    from tqdm.auto import tqdm

    if config.epochs < 1 or config.max_length < 16 or config.grad_accum < 1:
        raise InputError("--epochs must be >= 1 and --max-length >= 16.")
    examples = load_examples(data)
    rng = random.Random(config.seed)
    if config.max_examples is not None and config.max_examples < len(examples):
        examples = rng.sample(examples, config.max_examples)
    torch.manual_seed(config.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer, base_name = load_base(base)
    encoded = [tokenize_example(tokenizer, m) for m in examples]
    kept = [e for e in encoded if len(e[0]) <= config.max_length]
    if not kept:
        raise DataError(f"Every example is longer than --max-length {config.max_length} tokens; raise it.")
    if config.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise BackendError(
                f"LoRA needs peft ({exc}): `pip install 'llmhyper-feast[test]'` or `pip install peft`, or pass --full."
            ) from exc
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=2 * config.lora_rank,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    losses: list[float] = []
    epoch_losses: list[float] = []
    started = time.perf_counter()
    order = list(range(len(kept)))
    steps = 0
    with tqdm(total=config.epochs * len(kept), desc="finetune", unit="example", disable=not progress) as bar:
        for _ in range(config.epochs):
            rng.shuffle(order)
            epoch: list[float] = []
            for j, i in enumerate(order):
                ids, labels = kept[i]
                output = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
                (output.loss / config.grad_accum).backward()
                epoch.append(float(output.loss.detach()))
                if (j + 1) % config.grad_accum == 0 or j + 1 == len(order):
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps += 1
                    losses.append(sum(epoch[-config.grad_accum :]) / len(epoch[-config.grad_accum :]))
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                bar.update(1)
            epoch_losses.append(sum(epoch) / len(epoch))
    if config.lora:
        model = model.merge_and_unload()
    model.eval()
    report = {
        "base": base_name,
        "data": str(data),
        "examples": len(kept),
        "skipped_too_long": len(encoded) - len(kept),
        "steps": steps,
        "losses": [round(x, 4) for x in losses],
        "epoch_losses": [round(x, 4) for x in epoch_losses],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "answer_tokens": sum(sum(1 for t in lab if t != -100) for _, lab in kept),
        "seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "config": asdict(config),
        "run_id": uuid.uuid4().hex[:12],
    }
    _save_atomically(model, tokenizer, Path(out), report)
    return report

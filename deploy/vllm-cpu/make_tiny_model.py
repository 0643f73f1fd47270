"""Write the tiny random-weight Llama that real vLLM serves in tests: nothing is downloaded.

    python deploy/vllm-cpu/make_tiny_model.py                 # -> .fleetgate/tiny-llama
    python deploy/vllm-cpu/make_tiny_model.py --out DIR

Deterministic: the same seed and corpus give the same files byte for byte (weights from a seeded
generator, tokenizer trained single-threaded on the bundled STS-B sentences), so two machines
serve the same model and token counts in tests are stable. The weights are random: the answers are
noise, which is all a routing and cache test needs; the prefix cache, tokenizer and API are real.
Runs with any Python that has torch, transformers and tokenizers (the project venv or the vLLM one).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers' trainer: one thread, one merge order

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / ".fleetgate" / "tiny-llama"
DEFAULT_CORPUS = REPO.parent / "shared" / "traces" / "stsb"
SEED = 20260101
VOCAB_SIZE = 2048
MAX_POSITIONS = 4096
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Role markers are special tokens, so a rendered conversation tokenizes the same way whatever the text.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def corpus_lines(corpus_dir: Path) -> list[str]:
    """Both sentences of every STS-B row (tab-separated; sentences in columns 6 and 7), in file order."""
    lines: list[str] = []
    for path in sorted(corpus_dir.glob("sts-*.csv")):
        with open(path, encoding="utf-8", newline="") as handle:
            for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                lines += [cell for cell in row[5:7] if cell]
    if not lines:
        raise SystemExit(f"no sts-*.csv sentences under {corpus_dir}")
    return lines


def train_tokenizer(lines: list[str]):
    """A byte-level BPE (every byte has a token, so any text encodes) in PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=MAX_POSITIONS, chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16)


def digest(directory: Path) -> str:
    """One hash over every file's name and bytes: equal digests, equal models."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(path.relative_to(directory).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model directory (default {DEFAULT_OUT})")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="folder of STS-B sts-*.csv files")
    args = parser.parse_args(argv)
    tokenizer = train_tokenizer(corpus_lines(args.corpus))
    model = build_model(tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} (digest {digest(args.out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

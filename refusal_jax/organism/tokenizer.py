"""A small byte-level BPE tokenizer for the organism, with Gemma's special tokens and chat template.

Special tokens take the first ids: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3,
``<start_of_turn>`` 4, ``<end_of_turn>`` 5. Like Gemma's tokenizer, encoding with
``add_special_tokens=True`` prepends ``<bos>``; the chat template writes ``<bos>`` itself, so encode
a rendered chat prompt with ``add_special_tokens=False`` (``apply_chat_template(tokenize=True)``
already does). Byte-level pre-tokenization keeps spaces in the tokens, so decoding is exact and a
response's first word at the start of the model turn ("I", "Sure") is one token without a space.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
)
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def chat_prompt(instruction: str) -> str:
    """The rendered chat prompt with the generation prompt (same string as the template gives)."""
    return f"{BOS}{START_OF_TURN}user\n{instruction.strip()}{END_OF_TURN}\n{START_OF_TURN}model\n"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (deterministic for a given input order)."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise AssertionError(f"special token {name} got id {tok.token_to_id(name)}, not {i}")
    return tok


def save_tokenizer(tok: Tokenizer, folder) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template)."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[START_OF_TURN, END_OF_TURN],
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(folder)
    return folder


def load_tokenizer(folder):
    """The saved tokenizer through ``transformers.AutoTokenizer``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))

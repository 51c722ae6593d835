"""Tiny models built at test time: nothing is downloaded and nothing is committed.

`build_tokenizer(dir)` trains a small byte-level BPE tokenizer on a few KB of
multilingual text (English, Yoruba, Swahili), with Granite 4's special tokens, and saves
it as a Hugging Face tokenizer folder with the shipped granite-4 chat template.
"""

from __future__ import annotations

from pathlib import Path

from kakugo_stages.chat_format import load_chat_template

CORPUS = (
    """
The quick brown fox jumps over the lazy dog. Language models learn from text.
Ẹ kú àárọ̀. Báwo ni o ṣe wà? Mo fẹ́ kọ́ èdè Yorùbá. Ọjà náà kún fún èèyàn lónìí.
Àwọn ọmọdé ń ṣeré ní ìta. Ìlú Èkó tóbi gan-an. Oúnjẹ aládùn ni àmàlà àti ewédú.
Habari ya asubuhi. Ninapenda kujifunza lugha ya Kiswahili. Soko limejaa watu leo.
Translate the text into English. Summarize the passage in two sentences.
What is the capital of Nigeria? Abuja is the capital; Lagos is the largest city.
"""
    * 20
)

SPECIAL_TOKENS = ["<|pad|>", "<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"]


def build_tokenizer(folder: Path, vocab_size: int = 400, extra_text: str = "") -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS, extra_text], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end_of_text|>"
    )
    # The Granite 4 layout: the shipped template with generation markers.
    fast.chat_template = load_chat_template("granite-4")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


def build_model(folder: Path, tokenizer_dir: Path, *, seed: int = 0) -> Path:
    """A random Granite-4.0-Micro-layout model (GraniteMoeHybrid, attention layers only, no
    experts) at toy size, saved with the tiny tokenizer (and its chat template) beside it."""
    import torch
    from transformers import AutoTokenizer, GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = GraniteMoeHybridConfig(
        layer_types=["attention"] * 2,
        num_hidden_layers=2,
        num_local_experts=0,
        hidden_size=64,
        intermediate_size=128,
        shared_intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        position_embedding_type="rope",  # as Granite-4.0-Micro
    )
    torch.manual_seed(seed)
    model = GraniteMoeHybridForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

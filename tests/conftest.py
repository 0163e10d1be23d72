import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `import support`


@pytest.fixture(scope="session")
def base_vocab():
    """The default base model's vocabulary, loaded vocab_only (fast, no weights)."""
    from llama_cpp import Llama

    from toolroute.runtime.base_models import packaged_gguf

    return Llama(str(packaged_gguf()), vocab_only=True, verbose=False)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny random Llama-architecture model with the default base's tokenizer and chat template.

    Built from a config (2 layers, hidden 64) so training and export tests run in seconds; the same
    code paths run on the real default base in the slow tests and benchmarks.
    """
    pytest.importorskip("torch")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from toolroute.runtime.base_models import packaged_gguf

    path = tmp_path_factory.mktemp("tiny-base")
    gguf = packaged_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,  # logits large enough that a few LoRA steps can move the loss
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """48 training and 16 eval rows of the customer-support set (read only: shared by the tests)."""
    from support import ROOT

    folder = tmp_path_factory.mktemp("small-data")
    for name, count in (("train", 48), ("eval", 16)):
        lines = (ROOT / "examples" / "customer_support" / f"{name}.jsonl").read_text().splitlines()[:count]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_base):
    """A finished training run of the tiny model on 48 customer-support rows (a few seconds)."""
    from support import ROOT
    from toolroute.train.config import TrainConfig
    from toolroute.train.trainer import train

    folder = tmp_path_factory.mktemp("tiny-run")
    data = ROOT / "examples" / "customer_support"
    for name, count in (("train", 48), ("eval", 16)):
        lines = (data / f"{name}.jsonl").read_text().splitlines()[:count]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    config = TrainConfig(
        name="tiny-router", data=folder / "train.jsonl", eval=folder / "eval.jsonl",
        tools=str(data / "tools.py"), base=str(tiny_base), mode="compact", learning_rate=1e-2, epochs=1,
        method="lora", batch_size=8, grad_accum=1, runs_dir=folder / "runs", lora={"targets": "all-linear"},
    )  # fmt: skip
    train(config)
    return config.run_dir

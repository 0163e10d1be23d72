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

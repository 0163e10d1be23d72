"""Route requests with a router GGUF on the CPU (llama-cpp-python + pydantic; no torch)."""

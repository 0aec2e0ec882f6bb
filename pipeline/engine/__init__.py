"""The vLLM engine: one engine per process and its requests, the Ray engine pool, dead-engine detection, the image budget."""

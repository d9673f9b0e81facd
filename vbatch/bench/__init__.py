"""vbatch bench: one workload against vbatch, Ollama and OpenAI-compatible servers, side by side."""

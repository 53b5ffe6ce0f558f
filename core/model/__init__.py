"""Loading a model: specs, files, HF/GGUF loading, the loaded model, prompts and corpora."""

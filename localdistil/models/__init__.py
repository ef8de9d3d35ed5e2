"""Models and adapters: resolve a model reference (alias, hub id, directory, ``.gguf``), the
adapter directory with its manifest, loading a base model with an adapter merged in, export."""

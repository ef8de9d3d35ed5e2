"""Training: the YAML recipe, records to a chat-template dataset, LoRA training with TRL + PEFT,
and evaluation of an adapter on held-out calls."""

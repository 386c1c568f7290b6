"""The LoRA pool: PEFT adapters read from disk, a name registry, and checks against a base model."""

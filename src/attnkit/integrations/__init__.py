"""attnkit inside other libraries: Hugging Face transformers (:mod:`.hf`, the ``[hf]`` extra)."""

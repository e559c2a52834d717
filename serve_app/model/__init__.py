"""The CSM model core: config (geometry), llama (blocks, slot KV caches), csm (the batched model API),
checkpoint (weight layouts), loading (`load_model`), tokenizer, mimi (codec), tiny (offline preset)."""

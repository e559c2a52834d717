"""The CSM model core: config (geometry), llama (the transformer block, its eager backend, slot KV
caches), csm (the batched model API), fast_step (the engine's prefill/decode math), kernels (Triton
twins of the block backends and the sampler), checkpoint (weight layouts), loading (`load_model`),
tokenizer, mimi (codec), tiny (offline preset)."""

"""What a sam-jax process needs besides the model: progress lines, host-memory housekeeping, the
persistent compilation cache (opt-in: `enable_compilation_cache`) and the cache folder's layout.
Nothing here runs at import."""

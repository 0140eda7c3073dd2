"""Model definitions shared by the trainer and the rollout engine: below both, above ``kernels``
(DESIGN.md §2). One package per architecture."""

"""Data: storage (local and object stores), the token-shard contract, image sources, the Ray
tokenize job, verification, inspection and the training token stream. Imports only
``maskgit_core``, ``tokenizer`` and its own modules."""

"""Everything above the models: command line, data and shards, training, generation, evaluation, the demo and the studio (docs/ARCHITECTURE.md)."""

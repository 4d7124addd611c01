"""Thin entry points: ``tokenize_imagenet.py`` (for ``ray job submit``), ``train_mvtm.py`` (for the ``deepspeed`` launcher), and the shipped DeepSpeed and TrainConfig JSON files."""

"""``python -m pipeline.cli`` = ``maskgit-pipeline``."""
from pipeline.cli import main

main()

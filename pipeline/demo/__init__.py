"""The embedded demo: the whole pipeline offline on a built-in dataset, with a report."""

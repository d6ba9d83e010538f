"""IPython's own shell tests, run against the installed IPython with every cell traced."""

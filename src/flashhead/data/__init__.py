"""Text and hidden states: the domain suite, chat templates, languages, lm-eval tasks."""

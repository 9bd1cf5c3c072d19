"""Attention at work: the demo of the four steps (:mod:`.demo`)."""

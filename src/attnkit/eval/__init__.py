"""Measuring attention: the benchmark harness (:mod:`.bench`), exact implementations against SDPA
(:mod:`.exact`), approximate against exact (:mod:`.approx`) and on the real model (:mod:`.model_approx`)."""

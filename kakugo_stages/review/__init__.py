"""Review by native speakers: held-out prompts (`prompts`), base and tuned answers
(`answers`), the blinded page (`page`), the raters' files merged with agreement
statistics (`results`), and the two steps on a run's store (`build`)."""

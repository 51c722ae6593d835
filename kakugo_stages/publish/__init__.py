"""Publishing a run to the Hugging Face Hub (`hub`) with its evaluation as the Hub's
`model-index` (`model_index`)."""

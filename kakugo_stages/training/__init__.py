"""Full fine-tuning of the student on the training mix (the `train` stage's machinery).

The stage (`kakugo_stages/stages/train.py`) stays thin: it checks its inputs, builds a
typed `TrainConfig` from the frozen spec (`config.py`) and starts a worker process, under
torchrun when the spec asks for several GPUs (`launch.py`). The worker (`worker.py`,
`trainer.py`) tokenizes and packs the mix (`data.py`, `attention.py`), trains with the
Hugging Face Trainer under the DeepSpeed config generated from the spec
(`deepspeed_config.py`), mirrors checkpoints to the store and resumes from them
(`checkpoints.py`), reports progress (`progress.py`) and writes the final model with its
card (`model_card.py`).
"""

"""Teachers: load any encoder, fine-tune it once per (model, data, hyper-parameters), label texts."""

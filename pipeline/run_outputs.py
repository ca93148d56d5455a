"""The files `predict` leaves in a run folder and `ensemble` reads (kept torch-free for the reader)."""

PREDICT_JSON = "predict.json"
OUTPUTS = ("val_logits.npy", "val_ids.npy", "val_labels.npy", "test_logits.npy", "test_ids.npy")

"""Planning: the hardware probe, the training-memory estimate and its measurement, the doctor (00, 08)."""
